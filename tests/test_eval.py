"""`evaluate()` and `aperture eval`: exact top-1/confusion, TTA, outputs, errors; real-data runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.data import load_split
from aperture_zoo.model import create_model
from aperture_zoo.train import evaluate
from aperture_zoo.weights import read_metadata, save_weights

SPEC = create_model("resnet10", channels=(8, 16, 16, 32)).spec


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model(SPEC)
    with torch.no_grad():  # non-trivial BN statistics, so eval mode matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return save_weights(model, tmp_path_factory.mktemp("w") / "model.safetensors", {"test_top1": 0.0})


def _manual_logits(model: torch.nn.Module, images: np.ndarray, tta: bool) -> torch.Tensor:
    x = (torch.from_numpy(images).float() / 255 - torch.tensor(SPEC.mean).view(1, 3, 1, 1)) / torch.tensor(
        SPEC.std).view(1, 3, 1, 1)
    model.eval()
    with torch.no_grad():
        logits = model(x)
        return (logits + model(x.flip(3))) / 2 if tta else logits


@pytest.mark.parametrize("tta", [False, True])
def test_evaluate_matches_a_hand_computed_confusion_matrix(weights: Path, synthetic_cifar: Path, tta: bool) -> None:
    from aperture_zoo.weights import load_weights

    model = load_weights(create_model(SPEC), weights)
    split = load_split("test", synthetic_cifar)
    res = evaluate(model, split, batch_size=64, device="cpu", tta=tta)
    logits = _manual_logits(model, split.images, tta)
    pred = logits.argmax(1).numpy()
    expected = np.zeros((10, 10), dtype=int)
    np.add.at(expected, (split.labels, pred), 1)
    assert res.confusion == expected.tolist()
    assert res.num_images == 200 and res.top1 == pytest.approx(100 * (pred == split.labels).mean())
    assert res.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, torch.from_numpy(split.labels)).item(),
                                     rel=1e-4)
    per_class = res.per_class_top1
    assert list(per_class) == list(split.classes)
    assert per_class["cat"] == pytest.approx(100 * expected[3, 3] / 20)
    assert res.images_per_s > 0 and res.device == "cpu" and res.tta is tta


def test_cli_eval_writes_eval_json_and_confusion_png(weights: Path, synthetic_cifar: Path, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    r = CliRunner().invoke(app, ["eval", "resnet10", "--weights", str(weights), "--data-dir", str(synthetic_cifar),
                                 "--subset", "100", "--device", "cpu", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "eval.json").read_text())
    assert json.loads(r.stdout) == report
    for key in ("top1", "per_class_top1", "confusion", "images_per_s", "num_images", "device"):
        assert key in report, key
    assert report["num_images"] == 100 and sum(map(sum, report["confusion"])) == 100
    assert [sum(row) for row in report["confusion"]] == [10] * 10  # stratified test subset
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    text = CliRunner().invoke(app, ["eval", "resnet10", "--weights", str(weights), "--data-dir",
                                    str(synthetic_cifar), "--device", "cpu", "--out", str(out)])
    assert text.exit_code == 0 and "airplane" in text.stdout and "true\\pred" in text.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "exactly one of --weights SRC"),
        (["--pretrained", "--weights", "x.safetensors"], "exactly one of"),
        (["--weights", "missing.safetensors"], "does not exist"),
    ],
)
def test_cli_eval_errors_name_the_fix(args: list[str], message: str, synthetic_cifar: Path) -> None:
    r = CliRunner().invoke(app, ["eval", "resnet10", *args, "--data-dir", str(synthetic_cifar)])
    assert r.exit_code == 2 and message in " ".join(r.output.split()), r.output


def test_cli_eval_refuses_weights_of_another_model(weights: Path, synthetic_cifar: Path) -> None:
    r = CliRunner().invoke(app, ["eval", "resnet22", "--weights", str(weights), "--data-dir", str(synthetic_cifar)])
    assert r.exit_code == 2 and "aperture eval resnet10 --weights" in " ".join(r.output.split())


@pytest.mark.parametrize("command", ["train", "eval"])
def test_cli_missing_data_offline_and_no_download_name_the_fix(command: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Data missing: the CLI tries the download by default; offline, one line says what to do instead."""
    import urllib.error

    import torchvision.datasets.utils as tv_utils

    attempts = []

    def offline(url: str, root: str, md5: str | None = None, **kw) -> None:
        attempts.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    args = [command, "resnet10", "--data-dir", str(tmp_path), "--device", "cpu", "--out", str(tmp_path / "o")]
    if command == "eval":
        save_weights(create_model(SPEC), tmp_path / "w.safetensors")
        args += ["--weights", str(tmp_path / "w.safetensors")]
    r = CliRunner().invoke(app, args)
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "offline" in text and "--data-dir" in text and "Traceback" not in text, r.output
    assert len(attempts) == 1
    r = CliRunner().invoke(app, [*args, "--no-download"])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "CIFAR-10 not found" in text and "--data-dir" in text, r.output
    assert len(attempts) == 1


def test_safetensors_whose_header_length_starts_with_0x80_is_not_called_a_pickle(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    for pad in range(256):
        path = tmp_path / "m.safetensors"
        save_file({"a": torch.zeros(1)}, str(path), metadata={"k": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    assert read_metadata(path)["k"].startswith("x")


# ----------------------------------------------------------------------------- real CIFAR-10


@pytest.mark.realdata
def test_real_data_on_device_normalises_to_zero_mean(real_cifar: Path) -> None:
    from aperture_zoo.train.augment import normalise
    from aperture_zoo.train.loader import DeviceSplit, load_splits

    s = load_splits(real_cifar, subset_size=5000, test_subset=1000, seed=0)
    train = DeviceSplit.from_split(s.train, torch.device("cpu"))
    assert train.images.dtype == torch.uint8 and len(train) == 5000
    assert torch.bincount(train.labels).tolist() == [500] * 10
    x = normalise(train.images, torch.tensor(SPEC.mean), torch.tensor(SPEC.std))
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.03 and (x.std(dim=(0, 2, 3)) - 1).abs().max() < 0.03


@pytest.mark.realdata
@pytest.mark.slow
def test_real_subset_one_epoch_resnet10_writes_every_output(real_cifar: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = CliRunner().invoke(app, ["train", "resnet10", "--data-dir", str(real_cifar), "--subset", "1000",
                                     "--test-subset", "500", "--epochs", "1", "--batch-size", "100",
                                     "--device", "cpu", "--out", str(out), "--no-progress", "--json"])
    finally:
        torch.set_num_threads(before)
    assert r.exit_code == 0, r.output
    for name in ("model.safetensors", "metrics.jsonl", "curves.png", "recipe.json", "run.json",
                 "checkpoint.safetensors"):
        assert (out / name).stat().st_size > 0, name
    meta = read_metadata(out / "model.safetensors")
    assert json.loads(meta["subset"]) == 1000 and json.loads(meta["epochs"]) == 1
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["test_images"] == 500 and 0 <= row["test_top1"] <= 100


@pytest.mark.parametrize("option", [["--batch-size", "-5"], ["--batch-size", "0"], ["--subset", "0"]])
def test_cli_eval_numeric_options_are_checked_before_anything_runs(option, weights: Path, synthetic_cifar: Path,
                                                                   tmp_path: Path) -> None:
    """Issue: --batch-size -5 printed 'top-1 0.00%, 28,492,870 img/s' and exited 0."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["eval", "resnet10", "--weights", str(weights), "--data-dir",
                                      str(synthetic_cifar), "--out", str(out), *option])
    assert result.exit_code == 2
    assert f"{option[0]} must be at least 1" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_cli_eval_refuses_a_head_of_another_size_and_writes_no_nan(synthetic_cifar: Path, tmp_path: Path) -> None:
    """Issue: a 100-class head printed class_10..class_99 with nan% and wrote NaN into eval.json."""
    w100 = save_weights(create_model("resnet10", channels=(8, 16, 16, 32), num_classes=100),
                        tmp_path / "w100" / "model.safetensors")
    result = CliRunner().invoke(app, ["eval", "resnet10", "--weights", str(w100), "--data-dir", str(synthetic_cifar)])
    assert result.exit_code == 2 and "100-class head but the data has 10 classes" in result.output
    assert not (w100.parent / "eval.json").exists()


def test_per_class_accuracy_of_a_class_with_no_images_is_null_not_nan() -> None:
    from aperture_zoo.train.evaluate import EvalResult

    result = EvalResult(top1=50.0, loss=1.0, num_images=2, confusion=[[1, 0], [0, 0]], classes=("a", "b"))
    assert result.per_class_top1 == {"a": 100.0, "b": None}
    json.dumps(result.to_dict(), allow_nan=False)  # strict JSON
