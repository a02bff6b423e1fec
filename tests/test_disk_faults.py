"""Failing disks: full (ENOSPC), read-only (EROFS) and forbidden (EACCES) output locations.

Every writer goes through ``files.atomic_path``, so a fault must end in one line naming the file
(exit 2 on the command line), and the file that was there before must still be there, whole.
Faults are injected by patching the OS calls every atomic write makes (fsync, rename); when the
tests run as root and may mount, a real small tmpfs (full, then read-only) is used as well.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.errors import FileSystemError, os_error
from aperture_zoo.model import create_model
from aperture_zoo.weights import save_weights

FAULTS = [errno.ENOSPC, errno.EROFS, errno.EACCES]
WORDS = {errno.ENOSPC: "no space left", errno.EROFS: "read-only", errno.EACCES: "permission denied"}


@contextmanager
def failing_disk(monkeypatch: pytest.MonkeyPatch, code: int) -> Iterator[None]:
    """Writes fail with ``code`` when they are committed (fsync or rename), as a full or read-only disk does."""
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", fail)
        m.setattr(os, "replace", fail)
        yield


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _assert_one_line(result, code: int, where: Path) -> None:  # type: ignore[no-untyped-def]
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out and len([ln for ln in out.splitlines() if ln.startswith("error:")]) == 1, out
    line = next(ln for ln in out.splitlines() if ln.startswith("error:"))
    assert WORDS[code] in line and str(where) in line, line


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_weights(create_model("resnet10"), tmp_path_factory.mktemp("w") / "model.safetensors")


def test_os_error_wording_names_the_path_and_the_fix() -> None:
    err = os_error(OSError(errno.ENOSPC, "No space left on device", "/data/run/model.safetensors"))
    assert isinstance(err, FileSystemError)
    assert str(err) == ("'/data/run/model.safetensors': no space left on the device; free some space or choose "
                        "another output location")
    assert "read-only" in str(os_error(OSError(errno.EROFS, "x", "/r")))


@pytest.mark.parametrize("code", FAULTS)
def test_save_weights_keeps_the_previous_file_whole(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, code: int) -> None:
    torch.manual_seed(0)
    path = save_weights(create_model("resnet10"), tmp_path / "model.safetensors")
    before = _snapshot(tmp_path)
    torch.manual_seed(1)
    with failing_disk(monkeypatch, code), pytest.raises(OSError) as info:
        save_weights(create_model("resnet10"), path)
    assert info.value.errno == code and info.value.filename == str(path)  # the user's name, not the temp file's
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("code", FAULTS)
def test_convert_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, code: int) -> None:
    torch.save(create_model("resnet10").state_dict(), tmp_path / "w.pt")
    out = tmp_path / "out" / "model.safetensors"
    with failing_disk(monkeypatch, code):
        result = CliRunner().invoke(app, ["convert", str(tmp_path / "w.pt"), str(out), "--model", "resnet10"])
    _assert_one_line(result, code, out)
    assert not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("code", FAULTS)
def test_eval_keeps_the_previous_report(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, weights: Path,
                                        synthetic_cifar: Path, code: int) -> None:
    out = tmp_path / "ev"
    out.mkdir()
    (out / "eval.json").write_text('{"top1": 1.0, "confusion": [], "old": true}\n')  # an earlier eval's (older) record
    with failing_disk(monkeypatch, code):
        result = CliRunner().invoke(app, ["eval", "resnet10", "--weights", str(weights), "--data-dir",
                                          str(synthetic_cifar), "--subset", "20", "--out", str(out)])
    _assert_one_line(result, code, out / "eval.json")
    assert _snapshot(out) == {"eval.json": b'{"top1": 1.0, "confusion": [], "old": true}\n'}


@pytest.mark.parametrize("code", FAULTS)
def test_export_keeps_the_previous_onnx_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, weights: Path,
                                             code: int) -> None:
    (tmp_path / "resnet10.onnx").write_bytes(b"previous export")
    with failing_disk(monkeypatch, code):
        result = CliRunner().invoke(app, ["export", "resnet10", "--onnx", "--weights", str(weights), "--exporter",
                                          "legacy", "--no-validate", "--out", str(tmp_path)])
    _assert_one_line(result, code, tmp_path / "resnet10.onnx")
    assert _snapshot(tmp_path) == {"resnet10.onnx": b"previous export"}


@pytest.mark.parametrize("code", FAULTS)
def test_card_keeps_the_previous_card(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, weights: Path, code: int) -> None:
    out = tmp_path / "card"
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(weights, run / "model.safetensors")
    CliRunner().invoke(app, ["card", "resnet10", "--run", str(run), "--out", str(out)], catch_exceptions=False)
    before = _snapshot(out)
    torch.manual_seed(5)
    save_weights(create_model("resnet10"), run / "model.safetensors")  # a new run to describe
    with failing_disk(monkeypatch, code):
        result = CliRunner().invoke(app, ["card", "resnet10", "--run", str(run), "--out", str(out)])
    _assert_one_line(result, code, out / "model.safetensors")
    assert _snapshot(out) == before


@pytest.mark.parametrize("code", FAULTS)
def test_train_into_a_failing_folder_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 synthetic_cifar: Path, code: int) -> None:
    with failing_disk(monkeypatch, code):
        result = CliRunner().invoke(app, ["train", "resnet10", "--arch", "channels=4,4,4,4", "--epochs", "1",
                                          "-b", "50", "--device", "cpu", "--data-dir", str(synthetic_cifar),
                                          "--no-progress", "--out", str(tmp_path / "run")])
    _assert_one_line(result, code, tmp_path / "run")


def test_resume_onto_a_full_disk_keeps_the_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      synthetic_cifar: Path) -> None:
    run = tmp_path / "run"
    args = ["--device", "cpu", "--no-progress", "--data-dir", str(synthetic_cifar)]
    first = CliRunner().invoke(app, ["train", "resnet10", "--arch", "channels=4,4,4,4", "--epochs", "2", "-b", "100",
                                     "--subset", "100", "--test-subset", "20", "--time-budget", "0.001",
                                     "--out", str(run), *args])
    assert first.exit_code == 75, first.output  # paused after epoch 1, checkpointed
    before = _snapshot(run)
    with failing_disk(monkeypatch, errno.ENOSPC):
        result = CliRunner().invoke(app, ["train", "--resume", str(run), "--no-progress"])
    assert result.exit_code == 2 and "no space left" in result.output and "Traceback" not in result.output
    after = _snapshot(run)
    assert after["checkpoint.safetensors"] == before["checkpoint.safetensors"]
    assert not [name for name in after if ".tmp" in name]


def test_out_naming_an_existing_file_is_one_line(tmp_path: Path, weights: Path, synthetic_cifar: Path) -> None:
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"mine")
    for command in (["eval", "resnet10", "--weights", str(weights), "--data-dir", str(synthetic_cifar),
                     "--subset", "20", "--out", str(taken)],
                    ["export", "resnet10", "--onnx", "--random-init", "--no-validate", "--exporter", "legacy",
                     "--out", str(taken)],
                    ["card", "resnet10", "--weights", str(weights), "--out", str(taken)]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2 and "Traceback" not in result.output, (command, result.output)
        assert "taken.png" in result.output and "not a folder" in result.output
    assert taken.read_bytes() == b"mine"


# ------------------------------------------------------------------ real file systems (root only)

@contextmanager
def _tmpfs(folder: Path, options: str) -> Iterator[Path]:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_real_full_and_read_only_disks(tmp_path: Path, weights: Path) -> None:
    with _tmpfs(tmp_path / "full", "size=64k") as full:
        (full / "filler").write_bytes(b"\0" * 40_000)
        result = CliRunner().invoke(app, ["export", "resnet10", "--onnx", "--weights", str(weights), "--exporter",
                                          "legacy", "--no-validate", "--out", str(full)])
        _assert_one_line(result, errno.ENOSPC, full / "resnet10.onnx")
        assert sorted(p.name for p in full.iterdir()) == ["filler"]
    with _tmpfs(tmp_path / "ro", "size=64k,ro") as ro:
        result = CliRunner().invoke(app, ["card", "resnet10", "--weights", str(weights), "--out", str(ro / "c")])
        _assert_one_line(result, errno.EROFS, ro / "c")


def test_pictures_of_a_failing_disk_are_not_half_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from aperture_zoo.train.plots import plot_confusion

    path = tmp_path / "confusion.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    before = path.read_bytes()
    with failing_disk(monkeypatch, errno.ENOSPC), pytest.raises(OSError):
        plot_confusion([[1, 0], [0, 1]], ["a", "b"], path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png"]
