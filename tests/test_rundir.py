"""A run's folder: claimed exclusively, never someone else's files, locked, its metrics log trimmed on resume."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pytest

from aperture_zoo.files import CHECKPOINT_FILENAME, LOCK_FILENAME
from aperture_zoo.train import RunDirError
from aperture_zoo.train.checkpoint import CheckpointError
from aperture_zoo.train.recipes import FAST
from aperture_zoo.train.rundir import RunDir

SECOND = time.mktime((2025, 1, 1, 12, 0, 0, 0, 0, -1))  # 2025-01-01 12:00:00 local time


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with contextlib.ExitStack() as stack:
        first, second, third = (RunDir.open(None, "resnet10", stack, started=SECOND).path for _ in range(3))
    assert first == Path("runs/resnet10-20250101-120000")
    assert second == Path("runs/resnet10-20250101-120000-2") and third.name.endswith("-3")
    assert all(p.is_dir() for p in (first, second, third))


def test_temp_files_of_a_killed_first_epoch_do_not_make_the_folder_foreign(tmp_path: Path) -> None:
    """``atomic_path`` writes ``<name>.tmp<pid>``: a run killed while writing them may be started again."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("run.json", "recipe.json", "metrics.jsonl", f"run.json.tmp{os.getpid()}",
                 f"recipe.json.tmp{os.getpid()}", f"{CHECKPOINT_FILENAME}.tmp123"):
        (run / name).write_text("{")
    RunDir.check_new(run)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not empty"):
        RunDir.check_new(run)
    (run / CHECKPOINT_FILENAME).write_text("")
    with pytest.raises(RunDirError, match="already holds a training run"):
        RunDir.check_new(run)


def test_a_locked_folder_is_refused_until_its_holder_lets_go(tmp_path: Path) -> None:
    with contextlib.ExitStack() as holder:
        folder = RunDir.open(tmp_path / "run", "resnet10", holder)
        assert (folder.path / LOCK_FILENAME).exists()
        with contextlib.ExitStack() as other, pytest.raises(RunDirError, match="in use by another training"):
            RunDir.open(folder.path, "resnet10", other, resume=True)
    with contextlib.ExitStack() as other:
        assert RunDir.open(folder.path, "resnet10", other, resume=True) == folder


def test_start_writes_the_settings_and_reopen_trims_to_the_checkpoint(tmp_path: Path) -> None:
    from aperture_zoo.registry import get_spec

    spec = get_spec("resnet10")
    record = {"spec": json.loads(spec.to_json()), "arch": spec.arch_dict(), "seed": 3, "subset": None,
              "test_subset": None, "val_split": 0}  # what a run records (record() checks every field)
    folder = RunDir(tmp_path)
    assert folder.start(FAST, record) == []
    assert folder.record() == record and folder.recipe() == FAST
    for epoch in (1, 2, 3):
        folder.append_metrics({"epoch": epoch, "train_loss": 1.0 / epoch})
    with folder.metrics_path.open("a") as f:
        f.write('{"epoch": 4, "train_lo')  # cut off by kill -9 mid-append
    (tmp_path / f"{CHECKPOINT_FILENAME}.tmp999").write_bytes(b"torn")
    assert [r["epoch"] for r in folder.metrics()] == [1, 2, 3]
    assert [r["epoch"] for r in folder.reopen(epochs_done=2)] == [1, 2]
    # the log as the trainer appends it: one JSON row a line, nothing between them, a newline after the last
    assert folder.metrics_path.read_text() == '{"epoch": 1, "train_loss": 1.0}\n{"epoch": 2, "train_loss": 0.5}\n'
    assert not list(tmp_path.glob("*.tmp*"))


def test_a_folder_that_is_not_a_run_says_so(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a run directory.*run.json is missing"):
        RunDir(tmp_path).record()
    (tmp_path / "recipe.json").write_text('{"epochs": 4,')
    with pytest.raises(CheckpointError, match="recipe.json.*unreadable"):
        RunDir(tmp_path).recipe()
    (tmp_path / "run.json").write_text("[1, 2]")  # JSON, but not the object a run.json is
    with pytest.raises(CheckpointError) as info:
        RunDir(tmp_path).record()
    assert str(info.value) == (f"{str(tmp_path / 'run.json')!r} is unreadable (a JSON object was expected, not list); "
                               "this run cannot be resumed")


@pytest.mark.parametrize("field, value", [("seed", -1), ("seed", True), ("subset", -5), ("subset", "all"),
                                          ("test_subset", 1.5), ("val_split", -0.1), ("val_split", "half"),
                                          ("val_split", None)])
def test_a_damaged_run_json_names_the_file_the_field_and_the_fix(tmp_path: Path, field: str, value: object) -> None:
    from aperture_zoo.registry import get_spec

    spec = get_spec("resnet10")
    record = {"spec": json.loads(spec.to_json()), "arch": spec.arch_dict(), "seed": 3, "subset": None,
              "test_subset": None, "val_split": 0.1, field: value}
    (tmp_path / "run.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError) as info:
        RunDir(tmp_path).record()
    assert str(info.value) == (f"{str(tmp_path / 'run.json')!r} is damaged ({field!r} is {value!r}); this run cannot "
                               "be resumed: start a new one")


def test_out_naming_a_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    with pytest.raises(RunDirError) as info:
        RunDir.check_new(taken)
    assert str(info.value) == f"--out {str(taken)!r} is a file, not a folder; choose another --out"
    assert taken.read_text() == "mine"


def test_metrics_rows_of_another_shape_are_skipped_and_dropped_on_resume(tmp_path: Path) -> None:
    """metrics.jsonl is a file a user (or a tool) may have appended to: only rows with a whole epoch are the run's."""
    folder = RunDir(tmp_path)
    folder.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in (
        {"epoch": 1, "train_loss": 2.0}, {"note": "lr lowered"}, {"epoch": "2"}, {"epoch": True}, [3], "4",
        {"epoch": 2, "train_loss": 1.0})))
    assert folder.metrics() == [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.0}]
    assert [r["epoch"] for r in folder.reopen(epochs_done=1)] == [1]


def test_the_log_hash_a_checkpoint_records_is_the_hash_of_the_log_resume_settles(tmp_path: Path) -> None:
    """A checkpoint records ``log_sha256(epoch)``; resume trims later rows and torn lines, so the settled log (the one
    the final weights pin) has that very hash, and a rewritten row does not."""
    from aperture_zoo.files import file_sha256

    folder = RunDir(tmp_path)
    for epoch in (1, 2):
        folder.append_metrics({"epoch": epoch, "train_loss": 0.1 + epoch / 3})
    pinned = folder.log_sha256(1)
    folder.metrics_path.write_text(folder.metrics_path.read_text() + '{"epoch": 3, "tr')
    assert folder.log_sha256(1) == pinned
    notes: list[str] = []
    folder.reopen(epochs_done=1, say=notes.append)
    assert file_sha256(folder.metrics_path) == pinned and len(notes) == 1 and "cut off mid-write" in notes[0]
    folder.metrics_path.write_text(json.dumps({"epoch": 1, "train_loss": 0.5}) + "\n")
    assert folder.log_sha256(1) != pinned
