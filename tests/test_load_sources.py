"""One loading rule: every source gives a model the file's own architecture, head, classes, mean/std and temperature.

A run trained on a small synthetic folder (3 classes with names of their own, its own normalisation, a
temperature from --val-split) is loaded from every kind of source, in the library and on the command
line, against the local Hub server; and the library runs a model the caller left in any mode, on any
float input, without changing it.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aperture_zoo import catalog
from aperture_zoo.cli import app
from aperture_zoo.files import file_sha256
from cifar_synth import make_images, write_png_folder
from hub_fixtures import hub_server  # noqa: F401 - the local Hub
from hub_server import HubServer

NAMES = ["zebra ü", "[red]apple", "kiwi"]
REPO = "zoo/folder-run"


@dataclasses.dataclass(frozen=True)
class FolderRun:
    images: Path          # the folder: <class>/<n>.png
    weights: Path         # the run's model.safetensors
    card: Path            # `aperture card` of it: config.json + a copy of the weights
    spec: dict            # what every source must give back
    temperature: float
    head: str             # the Hub commit it was pushed as


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, hub_server: HubServer) -> FolderRun:  # noqa: F811
    from aperture_zoo.cards import write_card
    from aperture_zoo.model import create_model
    from aperture_zoo.publish import push
    from aperture_zoo.train import TrainConfig, fit
    from aperture_zoo.train.recipes import FAST

    root = tmp_path_factory.mktemp("folder-run")
    x, y = make_images(8, 3)
    keep = y < 3
    images = write_png_folder(root / "imgs", x[keep], y[keep], NAMES, 8)
    tiny = create_model("resnet10", channels=(8, 8, 8, 8)).spec
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("APERTURE_DATA", str(root / "cache"))
        torch.manual_seed(0)
        fit(TrainConfig(model=tiny, dataset=str(images), recipe=FAST.replace(epochs=1, batch_size=8), device="cpu",
                        out_dir=root / "run", progress=False, val_split=3))
        weights = root / "run" / "model.safetensors"
        card = write_card("resnet10", root / "card", run_dir=root / "run")
        mp.setenv("HF_ENDPOINT", hub_server.url)
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        push("resnet10", REPO, weights=weights, token="tok-alice")
    from aperture_zoo.weights import read_metadata

    meta = read_metadata(weights)
    spec = {"class_names": tuple(sorted(NAMES)), "mean": tuple(json.loads(meta["mean"])),
            "std": tuple(json.loads(meta["std"])), "num_classes": 3, "channels": (8, 8, 8, 8)}
    assert spec["mean"] != (0.4914, 0.4822, 0.4465)  # the folder's own statistics, not CIFAR-10's
    return FolderRun(images, weights, card, spec, float(meta["temperature"]), hub_server.repos[REPO].history()[0].oid)


@pytest.fixture
def hub(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> HubServer:  # noqa: F811
    """This process talks to the local Hub with a cache of this test's own."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "APERTURE_WEIGHTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return hub_server


def _facts(model) -> dict:  # noqa: ANN001
    return _facts_of(model.spec)


SOURCES = {  # (name, keyword arguments of load) for each kind of source
    "path": lambda r: (str(r.weights), {}),
    "folder": lambda r: (str(r.weights.parent), {}),
    "local-dir": lambda r: (f"local-dir:{r.weights.parent}", {"pretrained": True}),
    "card local-dir": lambda r: (f"local-dir:{r.card}", {"pretrained": True}),
    "hf-hub": lambda r: (f"hf-hub:{REPO}", {"pretrained": True}),
    "hf-hub@rev": lambda r: (f"hf-hub:{REPO}@{r.head}", {"pretrained": True}),
    "weights=path": lambda r: ("resnet10", {"weights": r.weights}),
    "weights=local-dir": lambda r: ("resnet10", {"weights": f"local-dir:{r.weights.parent}"}),
    "weights=hf-hub": lambda r: ("resnet10", {"weights": f"hf-hub:{REPO}"}),
    "weights dir": lambda r: ("resnet10", {"pretrained": True}),
    "tag": lambda r: ("resnet10.folder", {}),
}


@pytest.mark.parametrize("kind", list(SOURCES))
def test_every_source_gives_the_files_own_facts(run: FolderRun, hub: HubServer, kind: str,
                                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Regression: local-dir: and hf-hub: of a folder run gave CIFAR-10's class names and mean/std."""
    from aperture_zoo import load

    if kind == "weights dir":
        (tmp_path / "w" / "resnet10").mkdir(parents=True)
        (tmp_path / "w" / "resnet10" / "model.safetensors").write_bytes(run.weights.read_bytes())
        monkeypatch.setenv("APERTURE_WEIGHTS_DIR", str(tmp_path / "w"))
    if kind == "tag":  # a published record of the run, pinned, on the Hub
        record = dataclasses.replace(catalog.get_weights("resnet10"), tag="resnet10.folder", hub_repo=REPO,
                                     revision=run.head, sha256=file_sha256(run.weights), config_sha256=None,
                                     temperature=None)
        monkeypatch.setitem(catalog._WEIGHTS, "resnet10.folder", record)
    name, kwargs = SOURCES[kind](run)
    model = load(name, **kwargs)
    assert _facts(model) == run.spec and model.temperature == pytest.approx(run.temperature)
    assert not model.training


@pytest.mark.parametrize("kind", ["path", "folder", "local-dir", "card local-dir"])
def test_pretrained_false_is_the_architecture_alone_for_every_source(run: FolderRun, kind: str) -> None:
    """Regression (fifth hostile try, F3): a path or run folder with pretrained=False loaded the trained weights
    (local-dir: and hf-hub: gave the architecture alone, as the docstring says)."""
    from safetensors.torch import load_file

    from aperture_zoo import load

    name, _ = SOURCES[kind](run)
    model = load(name, pretrained=False)
    trained = load_file(run.weights)
    assert _facts(model) == run.spec and model.temperature is None
    assert not torch.equal(model.state_dict()["conv1.weight"], trained["conv1.weight"])


def test_a_source_with_pretrained_false_builds_its_architecture_only(run: FolderRun) -> None:
    from aperture_zoo import load

    model = load(f"local-dir:{run.card}", pretrained=False)  # asked for: the architecture, with the card's own facts
    assert _facts(model) == run.spec and model.temperature is None
    assert load(f"local-dir:{run.card}").temperature is not None  # a source names a file: its weights by default


def test_pretrained_false_refuses_a_config_of_other_weights(run: FolderRun, tmp_path: Path) -> None:
    """Fourth hostile try (low): `load("local-dir:DIR", pretrained=False)` built the architecture of a config.json
    that records other weights than the model.safetensors beside it (loading them was already refused)."""
    import shutil

    from aperture_zoo import load
    from aperture_zoo.weights import WeightsError

    folder = tmp_path / "card"
    shutil.copytree(run.card, folder)
    assert _facts(load(f"local-dir:{folder}", pretrained=False)) == run.spec  # its own weights beside it
    random_file = tmp_path / "other.safetensors"
    from hub_fixtures import random_weights

    shutil.copy(random_weights(random_file, "resnet10", init_seed=3), folder / "model.safetensors")
    with pytest.raises(WeightsError, match="that config describes other weights"):
        load(f"local-dir:{folder}", pretrained=False)
    (folder / "model.safetensors").unlink()  # no weights beside it: the config alone describes an architecture
    assert _facts(load(f"local-dir:{folder}", pretrained=False)) == run.spec


def _png(run: FolderRun) -> Path:
    return next((run.images / "kiwi").iterdir())


@pytest.mark.parametrize("args", [
    ["--model", f"hf-hub:{REPO}"],
    ["--model", "WEIGHTS"],
    ["--model", "resnet10", "--weights", "WEIGHTS"],
    ["--weights", f"local-dir:DIR"],
])
def test_predict_takes_any_source(run: FolderRun, hub: HubServer, args: list[str]) -> None:
    """Regression: `predict --model hf-hub:...` and `--model PATH` were refused; predict had no --weights."""
    args = [a.replace("WEIGHTS", str(run.weights)).replace("DIR", str(run.weights.parent)) for a in args]
    if args[0] == "--weights":
        args = ["--model", "resnet10", *args]
    result = CliRunner().invoke(app, ["predict", str(_png(run)), *args, "--json"])
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)[0]["top"]
    assert {t["label"] for t in top} == set(NAMES)
    assert f"temperature {run.temperature:.4g}" in result.stderr


@pytest.mark.parametrize("command", ["eval", "export", "info", "card", "push"])
def test_every_command_takes_a_source_as_the_model(run: FolderRun, hub: HubServer, command: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APERTURE_DATA", str(tmp_path / "cache"))
    source = f"hf-hub:{REPO}" if command in ("eval", "info") else str(run.weights)
    args = {
        "eval": ["--dataset", str(run.images), "--device", "cpu", "--out", str(tmp_path / "ev"), "--json"],
        "export": ["--onnx", "--exporter", "legacy", "--opset", "17", "--no-validate", "-o", str(tmp_path / "x")],
        "info": ["--json"],
        "card": ["--out", str(tmp_path / "card")],
        "push": ["--repo-id", "zoo/folder-run-2", "--token", "tok-alice"],
    }[command]
    result = CliRunner().invoke(app, [command, source, *args])
    assert result.exit_code == 0, result.output
    if command == "eval":
        report = json.loads(result.stdout)
        assert report["classes"] == sorted(NAMES)
        # the run's own temperature, from its validation split, is the one reported (not re-fitted on the test images)
        assert (report["temperature"], report["temperature_fitted_on"]) == (pytest.approx(run.temperature),
                                                                            "validation split")
        assert report["temperature_scaling"]["temperature"] == pytest.approx(run.temperature)
    elif command == "export":
        from aperture_zoo.export.predict import OnnxClassifier

        assert OnnxClassifier(tmp_path / "x" / "resnet10.onnx").labels == sorted(NAMES)
    elif command == "info":
        info = json.loads(result.stdout)
        assert info["spec"]["class_names"] == sorted(NAMES) and info["spec"]["num_classes"] == 3
    elif command == "card":
        assert json.loads((tmp_path / "card" / "config.json").read_text())["label_names"] == sorted(NAMES)
    else:
        assert hub.repos["zoo/folder-run-2"].history()[0].files["model.safetensors"] == run.weights.read_bytes()


def test_weights_given_twice_or_for_another_model_are_one_line(run: FolderRun) -> None:
    both = CliRunner().invoke(app, ["eval", str(run.weights), "--weights", str(run.weights)])
    assert both.exit_code == 2 and "names its weights itself" in both.output
    other = CliRunner().invoke(app, ["eval", "resnet22", "--weights", str(run.weights)])
    assert other.exit_code == 2 and "holds weights for resnet10, not resnet22" in " ".join(other.output.split())


# --------------------------------------------------------------------------- outside text never chooses a path


def test_a_folder_named_in_weights_metadata_is_never_read(run: FolderRun, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: `eval` decoded every image under the folder the weights' metadata named (it was '/')."""
    from aperture_zoo.model import create_model
    from aperture_zoo.weights import save_weights

    monkeypatch.setenv("APERTURE_DATA", str(tmp_path / "cache"))
    bait = tmp_path / "bait"  # a readable folder of images the user never named
    write_png_folder(bait, *make_images(3, 5), [f"c{i}" for i in range(10)], 3)
    model = create_model("resnet10", channels=(8, 8, 8, 8), num_classes=10)
    weights = save_weights(model, tmp_path / "model.safetensors", {"dataset": str(bait)})
    result = CliRunner().invoke(app, ["eval", "resnet10", "--weights", str(weights), "--device", "cpu"])
    assert result.exit_code == 2 and "pass that folder with --dataset DIR" in " ".join(result.output.split())
    assert "decoding" not in result.output and not (tmp_path / "cache").exists()
    exported = CliRunner().invoke(app, ["export", "resnet10", "--weights", str(weights), "--onnx", "--exporter",
                                        "legacy", "--opset", "17", "-o", str(tmp_path / "x")])
    assert exported.exit_code == 0 and "random inputs only" in exported.output, exported.output
    assert not (tmp_path / "cache").exists()


def test_a_crafted_hub_revision_is_refused_before_any_request(run: FolderRun, hub: HubServer, tmp_path: Path) -> None:
    """Regression: a revision such as ../../x made the Hub client write a file outside its cache."""
    from aperture_zoo import load
    from aperture_zoo.hub import HubError

    crafted = "../../../escaped"
    repo = hub.repos[REPO]
    repo.branches[crafted] = repo.branches["main"]  # a hostile Hub answers for it
    before = len(hub.requests)
    for attempt in (lambda: load(f"hf-hub:{REPO}@{crafted}", pretrained=True),
                    lambda: load("resnet10", weights=f"hf-hub:{REPO}@{crafted}")):
        try:
            attempt()
        except HubError as exc:
            assert "invalid Hub revision" in str(exc)
        assert not list(tmp_path.rglob("escaped*")), "a file was written outside the Hub cache"
        assert len(hub.requests) == before
    result = CliRunner().invoke(app, ["predict", str(_png(run)), "--model", f"hf-hub:{REPO}@{crafted}"])
    assert result.exit_code == 2 and "invalid Hub revision" in result.output
    assert len(hub.requests) == before and not list(tmp_path.rglob("escaped*"))


# --------------------------------------------------------------------------- the library runs a model for the caller


def test_predict_proba_on_a_model_left_in_train_mode(run: FolderRun) -> None:
    """Regression: a model left in train mode answered with batch statistics and its BatchNorm statistics changed."""
    from aperture_zoo import load, predict_proba

    model = load("resnet10", weights=run.weights)
    x = torch.randn(4, 3, 32, 32)
    expected = predict_proba(model, x)
    model.train()
    model.layer1[0].bn1.eval()  # a frozen BatchNorm in a fine-tune keeps its own mode too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.testing.assert_close(predict_proba(model, x), expected)
    torch.testing.assert_close(predict_proba(model, x, tta="flip").sum(1), torch.ones(4))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and model.layer2.training and not model.layer1[0].bn1.training


def test_evaluation_and_export_give_the_model_back_as_it_was(run: FolderRun, tmp_path: Path) -> None:
    from aperture_zoo import load
    from aperture_zoo.data import Split
    from aperture_zoo.export.onnx_export import to_onnx
    from aperture_zoo.train.evaluate import evaluate

    model = load("resnet10", weights=run.weights).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    split = Split(np.zeros((3, 3, 32, 32), np.uint8), np.array([0, 1, 2]), tuple(sorted(NAMES)))
    evaluate(model, split)
    to_onnx(model, tmp_path / "m.onnx", exporter="legacy", opset=17)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_float16_and_float64_inputs_are_converted_and_integers_refused(run: FolderRun) -> None:
    from aperture_zoo import load, predict_proba
    from aperture_zoo.model import InputShapeError

    model = load("resnet10", weights=run.weights)
    x = torch.randn(2, 3, 32, 32)
    want = predict_proba(model, x)
    torch.testing.assert_close(predict_proba(model, x.double()), want)
    torch.testing.assert_close(predict_proba(model, x.half()), want, atol=2e-3, rtol=0)
    with pytest.raises(InputShapeError, match="expects float input"):
        predict_proba(model, (x * 255).to(torch.uint8))


def test_predict_says_uncalibrated_once_per_run_and_notices_once(run: FolderRun, tmp_path: Path) -> None:
    """Regression: `predict` printed two notices per image (an 8x8 grey folder: 'scaled', 'resized')."""
    from PIL import Image

    from aperture_zoo import load, predict_proba
    from aperture_zoo.model import create_model
    from aperture_zoo.predict import UncalibratedWarning
    from aperture_zoo.weights import save_weights

    model = load(str(run.weights))
    model.temperature = model.calibrator = model.calibrator_tta = None  # save_weights keeps a calibration: none here
    plain = save_weights(model, tmp_path / "plain" / "model.safetensors")
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"g{i}.png")
        Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 900 + i)).save(paths[-1])
    result = CliRunner().invoke(app, ["predict", *map(str, paths), "--model", str(plain)])
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and "uncalibrated probabilities" in lines[0] and "T = 1" in lines[0]
    assert lines[1].startswith("notice: 5 of 5 images were changed") and "resized 8x8 to 32x32 (the model's input) (5 images)" in lines[1]
    model = create_model("resnet10", channels=(8, 8, 8, 8))
    with pytest.warns(UncalibratedWarning, match="T = 1"):
        predict_proba(model, torch.zeros(1, 3, 32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predict_proba(model, torch.zeros(1, 3, 32, 32))  # said once per model


def test_a_calibrator_of_another_head_is_refused(run: FolderRun) -> None:
    """Regression (fourth hostile try, low): a calibrator handed to predict_proba by hand was applied to a head of
    another size (its features and knots are those of its own head): plausible, wrong probabilities."""
    from aperture_zoo import load, predict_proba
    from aperture_zoo.calibration import fit_calibrator
    from aperture_zoo.calibrators import CalibratorError

    own, published = load("resnet10", weights=run.weights), load("resnet10", pretrained=True)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(CalibratorError, match="fitted on 10-class logits, not 3-class ones"):
        predict_proba(own, x, calibrator=published.calibrator)
    with pytest.raises(CalibratorError, match="fitted on 3-class logits, not 10-class ones"):
        predict_proba(published, x, calibrator=own.calibrator)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 10)) * 3
    fitted = fit_calibrator(z, np.where(rng.random(300) < 0.8, z.argmax(1), rng.integers(0, 10, 300)))
    with pytest.raises(CalibratorError, match="fitted on 10-class logits"):
        predict_proba(own, x, calibrator=fitted)
    torch.testing.assert_close(predict_proba(published, x, calibrator=fitted).sum(1), torch.ones(2))
    torch.testing.assert_close(predict_proba(own, x, calibrator=own.calibrator), predict_proba(own, x))
    # the binding survives the calibrator's own JSON round trip (sixth hostile try, N5: it was dropped)
    from aperture_zoo.calibrators import Calibrator
    saved = json.loads(json.dumps(published.calibrator.to_dict()))
    assert saved["classes"] == 10
    with pytest.raises(CalibratorError, match="fitted on 10-class logits, not 3-class ones"):
        predict_proba(own, x, calibrator=Calibrator.from_dict(saved))


def test_raw_float_pixels_are_refused_and_wrapped_models_unwrapped(run: FolderRun) -> None:
    """Regression (fifth hostile try, F4 and L3): 0..255 float pixels were classified confidently and wrongly (the
    ONNX classifier refused them); predict_proba of an nn.DataParallel model was an AttributeError."""
    from aperture_zoo import load, predict_proba, preprocess
    from aperture_zoo.model import InputShapeError

    model = load("resnet10", weights=run.weights)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    x = preprocess(pixels, model)
    raw = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    with pytest.raises(InputShapeError, match=r"got values in \[.*\]: raw pixels\? Normalise them first"):
        predict_proba(model, raw)
    with pytest.raises(InputShapeError, match="nan or inf"):
        predict_proba(model, torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(InputShapeError, match=r"pixels in \[0, 1\] \(ToTensor\(\) without Normalize\)\?"):
        predict_proba(model, raw / 255)  # fifth hostile try's round 6, N2
    extreme = x.clone()  # a white and a black image, normalised, sit at the edges of the range: accepted
    extreme[0], extreme[1] = preprocess(np.full((32, 32, 3), 255, np.uint8), model)[0], \
        preprocess(np.zeros((32, 32, 3), np.uint8), model)[0]
    assert predict_proba(model, extreme).shape == (2, 3)
    torch.testing.assert_close(predict_proba(torch.nn.DataParallel(model), x), predict_proba(model, x))


@pytest.mark.parametrize("kind", ["path", "folder", "local-dir", "card local-dir", "hf-hub", "hf-hub@rev"])
def test_init_takes_every_source_and_resume_knows_it(run: FolderRun, hub: HubServer, kind: str) -> None:
    """Regression (eighth hostile try, F9): `train --init hf-hub:...` or `local-dir:` was refused as a name."""
    from aperture_zoo.registry import get_spec
    from aperture_zoo.train.finetune import resolve_init
    from aperture_zoo.train.finetune import init_sha256

    ref, _ = SOURCES[kind](run)
    source = resolve_init(ref, get_spec("resnet10").replace(channels=(8, 8, 8, 8)))
    assert source.sha256 == file_sha256(run.weights) == init_sha256(ref)
    assert _facts_of(source.spec) == run.spec and source.record()["ref"] == ref


def _facts_of(spec) -> dict:  # noqa: ANN001
    return {"class_names": spec.label_names, "mean": spec.mean, "std": spec.std, "num_classes": spec.num_classes,
            "channels": spec.channels}


def test_a_fine_tune_from_the_hub_keeps_the_head_of_the_same_classes(run: FolderRun, hub: HubServer, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from aperture_zoo.weights import decode_metadata, read_metadata

    monkeypatch.setenv("APERTURE_DATA", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["train", "resnet10", "--arch", "channels=8,8,8,8", "--dataset", str(run.images),
                                      "--init", f"hf-hub:{REPO}", "--set", "epochs=1", "--set", "batch_size=8",
                                      "--val-split", "0", "--device", "cpu", "--no-progress",
                                      "--out", str(tmp_path / "ft")])
    assert result.exit_code == 0, result.output
    init = decode_metadata(read_metadata(tmp_path / "ft" / "model.safetensors"))["init"]
    assert (init["sha256"], init["head"], init["ref"]) == (file_sha256(run.weights), "kept", f"hf-hub:{REPO}")


def test_a_keyword_that_contradicts_the_weights_is_refused_not_dropped(run: FolderRun) -> None:
    """Regression (tenth hostile try, X4): load(PATH, mean=..., class_names=...) dropped the caller's values silently
    (and applied class_names= to the published weights): trained weights answer with their own."""
    from aperture_zoo import WeightsError, load

    with pytest.raises(WeightsError, match=r"^mean=\(0.5, 0.5, 0.5\) differs from the mean of .*drop mean=$"):
        load(str(run.weights), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    with pytest.raises(WeightsError, match=r"class_names=\('x', 'y', 'z'\) differs from the class_names of .*'kiwi'"):
        load(str(run.weights), class_names=["x", "y", "z"])
    with pytest.raises(WeightsError, match="differs from the class_names of"):
        load("resnet10", pretrained=True, class_names=[str(i) for i in range(10)])
    same = load(str(run.weights), class_names=list(run.spec["class_names"]), mean=run.spec["mean"], std=run.spec["std"])
    assert _facts(same) == run.spec
    fresh = load(str(run.weights), num_classes=2, class_names=["a", "b"])  # a new head takes the caller's names
    assert fresh.spec.label_names == ("a", "b") and fresh.spec.mean == run.spec["mean"]
