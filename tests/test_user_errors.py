"""One-line errors that name the fix, for inputs users really get wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.model import create_model
from aperture_zoo.convert import convert_checkpoint
from aperture_zoo.weights import WeightsError, load_weights, read_state_dict


@pytest.mark.parametrize("arch, message", [
    ("channels=1,2", "must have one entry per stage"),
    ("foo=3", "unknown spec field(s) ['foo']"),
    ("conv_kernel=2", "kernels must be odd"),
    ("channels=", "give at least one integer"),
])
def test_bad_arch_is_one_line_not_a_traceback(arch: str, message: str, tmp_path) -> None:
    result = CliRunner().invoke(app, ["train", "resnet10", "--arch", arch, "--device", "cpu", "--no-download",
                                      "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2


def test_test_subset_error_names_its_own_option(synthetic_cifar, tmp_path) -> None:
    result = CliRunner().invoke(app, ["train", "resnet10", "--arch", "channels=8,8,8,8", "--device", "cpu",
                                      "--data-dir", str(synthetic_cifar), "--test-subset", "0",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--test-subset must be in 1.." in result.output


def test_the_pickle_refusal_gives_a_fix_that_works(tmp_path) -> None:
    """Regression: the suggested conversion command failed as written. Follow it literally."""
    torch.manual_seed(0)
    model = create_model("resnet10")
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    pth = tmp_path / "old.safetensors"  # a pickle wearing the wrong extension
    torch.save(wrapped, pth)
    with pytest.raises(WeightsError, match="aperture convert") as info:
        load_weights("resnet10", pth)
    fix = str(info.value).split("convert it once: ")[1]
    cmd = fix.replace("NAME", "resnet10").split()
    assert cmd[:2] == ["aperture", "convert"]
    done = subprocess.run([sys.executable, "-m", "aperture_zoo", *cmd[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    tensors, meta = read_state_dict(tmp_path / "model.safetensors")
    assert meta["converted_from"] == "old.safetensors"
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())


def test_convert_refuses_what_is_not_a_matching_state_dict(tmp_path) -> None:
    torch.save({"a": 1}, tmp_path / "plain.pt")
    with pytest.raises(WeightsError, match="no state dict of tensors"):
        convert_checkpoint(tmp_path / "plain.pt", tmp_path / "out.safetensors", "resnet10")
    torch.save(create_model("resnet32").state_dict(), tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="does not match resnet10"):
        convert_checkpoint(tmp_path / "other.pt", tmp_path / "out.safetensors", "resnet10")
    assert not (tmp_path / "out.safetensors").exists()


def test_help_of_every_command_reads_whole_at_80_columns() -> None:
    """Regression: at 80 columns `train --help` cut its defaults off with an ellipsis."""
    import os

    commands = ["train", "train-zoo", "eval", "export", "bench", "predict", "list", "info", "samples", "card",
                "push", "demo", "convert", "runtimes"]
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    for command in commands:
        out = subprocess.run([sys.executable, "-m", "aperture_zoo", command, "--help"], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "…" not in out.stdout, f"{command} --help truncates:\n{out.stdout}"
        assert max(len(line) for line in out.stdout.splitlines()) <= 80


@pytest.mark.parametrize("args, message", [
    (["bench", "resnet10", "--min-seconds", "-1", "--device", "cpu"], "--min-seconds must be >= 0"),
    (["export", "resnet10", "--random-init", "--onnx", "--opset", "3"], "--opset 3 is out of range"),
    (["export", "resnet10", "--random-init", "--onnx", "--opset", "999"], "knows opsets up to"),
    (["predict", "nothing.png", "--onnx", "nothing.onnx", "--top-k", "0"], None),
    (["demo", "--port", "-1"], "--port must be in 0..65535"),
])
def test_numeric_options_fail_first_in_one_line(args, message, tmp_path) -> None:
    """Found by trying every command: a negative timing window ran, an impossible opset exported
    first, --port -1 gave a traceback."""
    result = CliRunner().invoke(app, [*args, *(["--out", str(tmp_path / "x")] if args[0] == "export" else [])])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    if message:
        assert message in result.output
    assert not (tmp_path / "x").exists()  # nothing was exported before the error


def test_predict_top_k_is_checked_by_the_library(tmp_path) -> None:
    from aperture_zoo.export.predict import OnnxClassifier
    from aperture_zoo.images import ImageError

    clf = OnnxClassifier.__new__(OnnxClassifier)  # the check comes before any file is touched
    with pytest.raises(ImageError, match="--top-k must be at least 1, got 0"):
        clf.predict(["x.png"], top_k=0)


def test_a_mismatch_is_short_and_names_the_architecture_the_file_fits(tmp_path) -> None:
    """Found by a user: converting resnet10 weights as resnet22 printed ~3,000 characters."""
    torch.save(create_model("resnet10").state_dict(), tmp_path / "r10.pth")
    with pytest.raises(WeightsError) as info:
        convert_checkpoint(tmp_path / "r10.pth", tmp_path / "out.safetensors", "resnet22")
    message = str(info.value)
    assert len(message) < 700 and "more shape differences" in message
    assert message.endswith("the tensors fit resnet10: use that model name")


def test_convert_never_overwrites(tmp_path) -> None:
    torch.save(create_model("resnet10").state_dict(), tmp_path / "r10.pth")
    (tmp_path / "out.safetensors").write_text("keep me")
    with pytest.raises(WeightsError, match="already exists; choose another output path"):
        convert_checkpoint(tmp_path / "r10.pth", tmp_path / "out.safetensors", "resnet10")
    assert (tmp_path / "out.safetensors").read_text() == "keep me"


def test_bench_shows_progress_lines_when_piped() -> None:
    """Found by a user: bench ran 67 s with no output in a log."""
    out = subprocess.run([sys.executable, "-m", "aperture_zoo", "bench", "resnet10", "--device", "cpu",
                          "--variants", "torch-eager", "--batch-sizes", "1", "--min-seconds", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch-eager on cpu, batch 1" in out.stderr


def test_an_error_is_one_line_in_a_log_even_with_forced_colours() -> None:
    """Regression (tenth hostile try, C5): with FORCE_COLOR=1 (set by many CI systems) rich took the log for an
    80-column terminal and wrapped the one-line error onto two lines."""
    import os
    import re

    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "40"}
    proc = subprocess.run([sys.executable, "-m", "aperture_zoo", "train", "resnet10", "--arch", "blocks=1,1"],
                          env=env, capture_output=True, text=True, timeout=120)
    lines = re.sub(r"\x1b\[[0-9;]*m", "", proc.stderr).strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: resnet10: blocks (1, 1) and channels") and lines[0].endswith("per stage")
