"""Hostile inputs: each ends in one line naming the problem, an HTTP reply, or a correct partial answer.

Never a traceback, a hang or a confident wrong number. One test (or a few) per class of fault,
driven through the root that handles the whole class.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.data import DataError, load_split
from aperture_zoo.demo import DemoServer
from aperture_zoo.export.errors import ExportError, OnnxFileError
from aperture_zoo.export.onnx_export import to_onnx
from aperture_zoo.export.predict import OnnxClassifier
from aperture_zoo.images import ImageError, load_image, load_images
from aperture_zoo.model import create_model
from aperture_zoo.weights import WeightsError, load_weights, save_weights
from cifar_synth import write_cifar10


def _one_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert "Traceback" not in output, output
    return lines[0] if lines else ""


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet10").eval()


@pytest.fixture(scope="module")
def nan_weights(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bad = create_model("resnet10")
    bad.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in bad.parameters():
            p.fill_(float("nan"))
    return save_weights(bad, tmp_path_factory.mktemp("nan") / "model.safetensors")


@pytest.fixture(scope="module")
def onnx_file(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return to_onnx(model, tmp_path_factory.mktemp("onnx") / "resnet10.onnx", exporter="legacy")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "[b]x.png"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / name)
    (folder / "bad.png").write_bytes(b"not an image at all")
    (folder / "bomb.png").write_bytes(_png_header(30000, 30000))
    return folder


def _png_header(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


# ------------------------------------------------------------------ 1. non-finite numbers

def test_nan_weights_are_refused_naming_the_file_and_the_fix(nan_weights: Path) -> None:
    with pytest.raises(WeightsError, match="non-finite values .* lower --lr") as info:
        load_weights("resnet10", nan_weights)
    assert str(nan_weights) in str(info.value)


@pytest.mark.parametrize("command", [
    ["eval", "resnet10", "--no-download", "--weights"],
    ["export", "resnet10", "--onnx", "--no-validate", "--weights"],
])
def test_cli_refuses_nan_weights_in_one_line(command: list[str], nan_weights: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [*command, str(nan_weights), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "non-finite values" in _one_line(result.output)
    assert not (tmp_path / "o").exists()


def test_export_of_a_nan_model_never_passes(model: torch.nn.Module, tmp_path: Path) -> None:
    from aperture_zoo.export.pipeline import export_model

    bad = create_model("resnet10")
    bad.load_state_dict(model.state_dict())
    with torch.no_grad():
        bad.fc.bias.fill_(float("inf"))
    with pytest.raises(WeightsError, match="non-finite"):
        export_model(bad.eval(), tmp_path, exporter="legacy", provider="cpu")


def test_validation_fails_and_json_stays_valid_on_nan_logits(tmp_path: Path) -> None:
    from aperture_zoo.export.validate import Tolerance, ValidationReport, _judge, compare

    logits = np.full((4, 10), np.nan, np.float32)
    comp = compare(logits, logits, "random")
    fails = _judge(comp, Tolerance(max_abs=1e-4, min_agreement=0.0), "fp32")
    assert fails and "non-finite" in fails[0]
    report = ValidationReport("x.onnx", "resnet10", "fp32", "cpu", Tolerance(max_abs=1e-4), [comp], fails)
    text = report.write_json(tmp_path / "r.json").read_text()
    assert ": NaN" not in text and json.loads(text)["comparisons"][0]["max_abs_diff"] is None
    assert json.loads(text)["passed"] is False


def test_predict_never_prints_nan_percent(nan_weights: Path, pictures: Path, tmp_path: Path) -> None:
    bad = load_weights_unchecked(nan_weights)
    path = to_onnx(bad, tmp_path / "nan.onnx", exporter="legacy")
    result = CliRunner().invoke(app, ["predict", "--onnx", str(path), str(pictures / "a.png")])
    assert result.exit_code == 2 and "nan%" not in result.output
    assert "non-finite outputs" in _one_line(result.output)


def load_weights_unchecked(path: Path) -> torch.nn.Module:
    from safetensors.torch import load_file

    net = create_model("resnet10")
    net.load_state_dict(load_file(str(path)))
    return net.eval()


@pytest.mark.parametrize("pixels, message", [
    (np.full((1, 3, 32, 32), 200.0, np.float32), "in \\[0, 1\\]"),
    (np.full((1, 3, 32, 32), np.nan, np.float32), "finite"),
    (np.zeros((1, 32, 32, 3), np.int32), "uint8"),
])
def test_classifier_refuses_pixels_of_the_wrong_dtype_or_scale(onnx_file: Path, pixels: np.ndarray, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        OnnxClassifier(onnx_file).predict_proba(pixels)


def _cifar_with(tmp_path: Path, **test_batch: object) -> Path:
    root = write_cifar10(tmp_path, n_train_per_class=1, n_test_per_class=1)
    path = root / "cifar-10-batches-py" / "test_batch"
    with open(path, "rb") as f:
        batch = pickle.load(f)
    batch.update({k.encode(): v for k, v in test_batch.items()})
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return root


def test_cifar_pixels_scaled_to_floats_are_refused_not_cast(tmp_path: Path) -> None:
    root = _cifar_with(tmp_path, data=np.full((10, 3072), 0.5, np.float32))
    with pytest.raises(DataError, match="not 8-bit integers"):
        load_split("test", root)


# ------------------------------------------------------------------ 6. labels out of range

@pytest.mark.parametrize("label", [-1, 10, 255])
def test_labels_outside_the_class_range_are_named(tmp_path: Path, label: int) -> None:
    root = _cifar_with(tmp_path, labels=[0, 1, 2, 3, 4, 5, 6, 7, 8, label])
    with pytest.raises(DataError, match=f"outside the class range 0..9 \\(e.g. {label}\\)"):
        load_split("test", root)


def test_cli_names_bad_labels_not_a_subset(tmp_path: Path) -> None:
    root = _cifar_with(tmp_path, labels=[-1] * 10)
    weights = save_weights(create_model("resnet10"), tmp_path / "w" / "model.safetensors")
    result = CliRunner().invoke(app, ["eval", "resnet10", "--weights", str(weights), "--no-download",
                                      "--data-dir", str(root)])
    assert result.exit_code == 2 and "subset" not in result.output
    assert "outside the class range" in _one_line(result.output)


# ------------------------------------------------------------------ 2. the guarded decoder

def test_a_small_png_declaring_30000x30000_is_refused_before_decoding(pictures: Path) -> None:
    assert (pictures / "bomb.png").stat().st_size < 200
    with pytest.raises(ImageError, match="more than 64,000,000 pixels"):
        load_image(pictures / "bomb.png")


def test_the_decoder_limit_is_its_own_below_pillows(tmp_path: Path) -> None:
    """8,500 x 8,500 = 72 M pixels: over this decoder's 64 M, under pillow's own bomb limit (about 89 M)."""
    from PIL import Image

    from aperture_zoo.images import MAX_PIXELS, ImageTooLargeError

    assert MAX_PIXELS < 8500 * 8500 < Image.MAX_IMAGE_PIXELS
    (tmp_path / "big.png").write_bytes(_png_header(8500, 8500))
    with pytest.raises(ImageTooLargeError, match="declares 8500x8500 pixels"):
        load_image(tmp_path / "big.png")


def test_safe_shows_control_characters_and_escapes_markup() -> None:
    from aperture_zoo.cli.common import safe

    shown = safe("a\x1b[31mred\x07[b]x.png\tz")
    assert "\x1b" not in shown and "\x07" not in shown and "\t" not in shown  # nothing reaches the terminal raw
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), color_system=None, width=200)
    console.print(shown, highlight=False)  # what the terminal gets: the name as itself, escapes visible
    assert console.file.getvalue().rstrip("\n") == "a\\x1b[31mred\\x07[b]x.png\\tz"


def test_a_fifo_is_refused_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(fifo)


def test_batch_decoding_collects_every_failure(pictures: Path) -> None:
    names = ["a.png", "bad.png", "b.png", "bomb.png", "missing.png"]
    decoded, failed = load_images([pictures / n for n in names])
    assert [i for i, _, _ in decoded] == [0, 2]
    assert [i for i, _ in failed] == [1, 3, 4] and all(isinstance(e, ImageError) for _, e in failed)


# ------------------------------------------------------------------ 3. batches

def test_predict_answers_every_readable_image_and_lists_failures(onnx_file: Path, pictures: Path) -> None:
    files = [str(pictures / n) for n in ("a.png", "bad.png", "b.png", "bomb.png")]
    result = CliRunner().invoke(app, ["predict", "--onnx", str(onnx_file), *files])
    assert result.exit_code == 1, result.output
    answered = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in answered] == [files[0], files[2]]
    assert "bad.png" in result.stderr and "bomb.png" in result.stderr and "2 of 4 images" in result.stderr
    assert "Traceback" not in result.stderr


def test_predict_json_keeps_answers_and_failures(onnx_file: Path, pictures: Path) -> None:
    files = [str(pictures / n) for n in ("a.png", "bad.png")]
    result = CliRunner().invoke(app, ["predict", "--onnx", str(onnx_file), "--json", *files])
    rows = json.loads(result.stdout)
    assert result.exit_code == 1 and rows[0]["image"] == files[0] and rows[0]["top"]
    assert rows[1]["image"] == files[1] and "could not be decoded" in rows[1]["error"]


# ------------------------------------------------------------------ 4. outside text is printed as itself

def test_a_file_named_like_markup_prints_as_itself(onnx_file: Path, pictures: Path) -> None:
    path = str(pictures / "[b]x.png")
    result = CliRunner().invoke(app, ["predict", "--onnx", str(onnx_file), path])
    assert result.exit_code == 0 and result.stdout.startswith(f"{path}: ")


def test_control_characters_in_names_are_shown_not_sent(onnx_file: Path, tmp_path: Path) -> None:
    name = str(tmp_path / "evil\x1b[31m[b]red.png")
    result = CliRunner().invoke(app, ["predict", "--onnx", str(onnx_file), name])
    assert result.exit_code == 2 and "\x1b" not in result.output  # 2: no image answered
    assert "\\x1b[31m[b]red.png" in result.output


def test_errors_quoting_markup_are_not_interpreted(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", "resnet10", "--weights", str(tmp_path / "[red]w[/red].safetensors")])
    assert result.exit_code == 2 and "[red]w[/red].safetensors" in _one_line(result.output)


# ------------------------------------------------------------------ 9. an ONNX graph from another program

def _foreign_onnx(path: Path, shape: list, out_shape: list) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), path)
    return path


@pytest.mark.parametrize("shape, out_shape", [
    (["N", 10], ["N", 10]),                       # not images
    (["N", 1, 28, 28], ["N", 1, 28, 28]),         # MNIST-like, grey
    (["N", 3, "H", "W"], ["N", 3, "H", "W"]),     # symbolic size
])
def test_predict_with_an_onnx_graph_from_another_program_is_one_line(tmp_path: Path, pictures: Path,
                                                                    shape: list, out_shape: list) -> None:
    path = _foreign_onnx(tmp_path / "other.onnx", shape, out_shape)
    with pytest.raises(OnnxFileError, match="not an aperture_zoo export"):
        OnnxClassifier(path)
    result = CliRunner().invoke(app, ["predict", "--onnx", str(path), str(pictures / "a.png")])
    assert result.exit_code == 2 and "not an aperture_zoo export" in _one_line(result.output)


def test_a_fifo_as_onnx_or_weights_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "w"
    os.mkfifo(fifo)
    with pytest.raises(OnnxFileError, match="not a regular file"):
        OnnxClassifier(fifo)
    result = CliRunner().invoke(app, ["eval", "resnet10", "--weights", str(fifo)])
    assert result.exit_code == 2 and "not a regular file" in _one_line(result.output)


# ------------------------------------------------------------------ 8. the demo server

def _reply(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        return s.recv(200).split(b"\r\n")[0]


def test_demo_replies_to_every_malformed_path(capfd: pytest.CaptureFixture[str]) -> None:
    web = Path(tempfile.mkdtemp())
    (web / "index.html").write_text("hi")
    (web / "big.bin").write_bytes(b"x" * 8_000_000)
    with DemoServer(web, web / "models", port=0) as server:
        port = server.httpd.server_address[1]
        for path, status in [(b"/%00", b"400"), (b"/models/%00x", b"400"), (b"/\x00", b"400"),
                             (b"/index.html/x", b"404"), (b"/models/..%2f..%2fetc/passwd", b"404"),
                             (b"/" + b"a" * 5000, b"404"), (b"/index.html", b"200")]:
            assert status in _reply(port, b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"), path
        for _ in range(3):  # clients that go away mid-download
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
            s.recv(10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        assert b"200" in _reply(port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert b"421" in _reply(port, b"GET / HTTP/1.1\r\n\r\n")  # no Host: not a request to this machine
    assert "Traceback" not in capfd.readouterr().err


# ------------------------------------------------------------------ 7. environment variables

def test_a_malformed_hub_org_only_matters_to_hub_fetches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from aperture_zoo import hub
    from aperture_zoo.hub import HubUnavailableError

    monkeypatch.setenv("APERTURE_HUB_ORG", "bad org!/x")
    for command in (["list"], ["info", "resnet22"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0 and "Traceback" not in result.output, (command, result.output)
    with pytest.raises(HubUnavailableError, match="APERTURE_HUB_ORG='bad org!/x'"):
        hub.download("bad org!/x/resnet22", local_only=True)


def test_a_failed_download_leaves_no_empty_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torchvision.datasets.utils as tv

    from aperture_zoo.data import download

    def offline(url: str, root: str, **kwargs: object) -> None:
        Path(root).mkdir(parents=True, exist_ok=True)
        raise OSError("network is unreachable")

    monkeypatch.setattr(tv, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="downloading it .* failed"):
        download(tmp_path / "new" / "data")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 9. misleading refusals

def test_a_negative_seed_is_one_line(synthetic_cifar: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "resnet10", "--seed", "-1", "--device", "cpu", "--data-dir",
                                      str(synthetic_cifar), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--seed must be in 0.." in _one_line(result.output)


def test_resume_of_a_run_still_starting_says_so(tmp_path: Path) -> None:
    import fcntl

    (tmp_path / "run.json").write_text("{}")
    with open(tmp_path / ".lock", "a+") as held:  # what a starting `aperture train` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "in use by another training process" in _one_line(result.output)
    assert "first checkpoint" not in result.output


@pytest.mark.parametrize("recipe", ['[1, 2]', '{"epochs": "ten"}', '{"lr": -1}', "{not json"])
def test_resume_with_a_corrupt_recipe_json_is_one_line(tmp_path: Path, recipe: str) -> None:
    spec = create_model("resnet10").spec
    (tmp_path / "run.json").write_text(json.dumps({"spec": json.loads(spec.to_json()), "arch": spec.arch_dict(),
                                                   "seed": 0, "subset": None, "test_subset": None, "val_split": 0}))
    (tmp_path / "recipe.json").write_text(recipe)
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "recipe.json" in _one_line(result.output)
    assert "cannot be resumed" in result.output or "unreadable" in result.output


def test_card_of_another_architecture_copies_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save_weights(create_model("resnet20"), run / "model.safetensors")
    (run / "eval.json").write_text("{}")
    out = tmp_path / "card"
    result = CliRunner().invoke(app, ["card", "resnet10", "--run", str(run), "--out", str(out)])
    assert result.exit_code == 2 and "holds weights for resnet20" in _one_line(result.output)
    assert not out.exists()


# ------------------------------------------------------------------ rough edges

def test_ctrl_c_in_train_zoo_says_run_the_same_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       synthetic_cifar: Path) -> None:
    import aperture_zoo.train.zoo as zoo
    from aperture_zoo.train import TrainingInterrupted

    def interrupted(cfg: object) -> None:
        run = tmp_path / "runs" / "resnet10"
        raise TrainingInterrupted(f"interrupted by SIGINT in epoch 1 at step 3/10; checkpoint saved in {str(run)!r}",
                                  run, 2)

    monkeypatch.setattr(zoo, "fit", interrupted)
    result = CliRunner().invoke(app, ["train-zoo", "resnet10", "--runs-dir", str(tmp_path / "runs"), "--no-export",
                                      "--device", "cpu", "--data-dir", str(synthetic_cifar)])
    assert result.exit_code == 130 and "train --resume" not in result.output
    assert "running the same `aperture train-zoo` command again" in " ".join(result.output.split())


def test_readme_quickstart_names_files_that_exist() -> None:
    import re

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    named = set(re.findall(r"aperture_zoo/sample_images/[\w*.]+", readme))
    assert named and "\"cat.png\"" not in readme and "dog.jpg" not in readme
    for pattern in named:
        assert list(root.glob(pattern)), pattern


def test_list_notes_keep_top1_percent_together_at_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "50")
    from aperture_zoo.cli import common

    monkeypatch.setattr(common.console, "_width", 50)
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0 and "resnet10" in result.output and "4,903,242" in result.output
    assert "…" not in result.output


def test_training_shows_the_whole_runs_eta_and_warns_when_one_epoch_overruns_the_budget() -> None:
    import io

    from rich.console import Console

    from aperture_zoo.progress import TrainProgress

    clock = [100.0]
    out = io.StringIO()
    bar = TrainProgress(False, epochs=10, steps=100, console=Console(file=out, width=80), budget_s=60.0,
                        now=lambda: clock[0])
    with bar:
        bar.start_epoch(0, 0)
        clock[0] += 5.0  # 10 steps in 5 s: 50 s per epoch, 500 s for the run
        bar.update(10, 2.3, 10.0, 20.0)
        assert bar.run_eta(10) == pytest.approx((45.0, 495.0))
        assert "warning" not in out.getvalue()  # 50 s fits the 60 s budget
    slow = TrainProgress(False, epochs=3, steps=100, console=Console(file=out, width=80), budget_s=60.0,
                         now=lambda: clock[0])
    with slow:
        slow.start_epoch(0, 0)
        clock[0] += 10.0  # 100 s per epoch
        slow.update(10, 2.3, 10.0, 20.0)
        slow.update(11, 2.3, 10.0, 20.0)
    assert out.getvalue().count("warning: one epoch takes about 100s") == 1


def test_long_export_steps_keep_a_log_moving(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from aperture_zoo import progress as export_progress

    out = io.StringIO()
    monkeypatch.setattr(export_progress, "PIPED_INTERVAL_S", 0.0)
    with export_progress.ConsoleProgress(Console(file=out, width=80)) as bar:
        bar.stage("validating fp32 on 10,000 test images")
        for done in (1000, 2000, 10000):
            bar.update(done, 10000)
    lines = out.getvalue().splitlines()
    assert "validating" in lines[0] and lines[1].endswith("1,000/10,000") and lines[2].endswith("2,000/10,000")
    assert len(lines) == 3  # the finished count is not repeated


def test_eval_in_a_log_says_how_far_it_is(monkeypatch: pytest.MonkeyPatch, synthetic_cifar: Path, tmp_path: Path) -> None:
    import aperture_zoo.progress as progress

    monkeypatch.setattr(progress, "PIPED_INTERVAL_S", 0.0)
    weights = save_weights(create_model("resnet10"), tmp_path / "model.safetensors")
    result = CliRunner().invoke(app, ["eval", "resnet10", "--weights", str(weights), "--data-dir", str(synthetic_cifar),
                                      "--batch-size", "50"])
    assert result.exit_code == 0, result.output
    assert "50/200 after" in result.stderr and "150/200 after" in result.stderr
