"""The training loop on tiny synthetic CIFAR: learning, outputs, exact resume, SIGTERM, NaN stop, errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aperture_zoo.data import DataError
from aperture_zoo.model import create_model
from aperture_zoo.train import (RunDirError, TimeBudgetReached, TrainConfig, TrainingDiverged, TrainingError,
                                TrainingInterrupted, apply_overrides, fit, get_recipe)
from aperture_zoo.train import loop
from aperture_zoo.train.rundir import RunDir
from aperture_zoo.train.step import TrainStep
from aperture_zoo.train.checkpoint import CheckpointError, load_checkpoint
from aperture_zoo.train.recipes import RecipeError
from aperture_zoo.weights import read_metadata

# A 98k-parameter derivative of resnet10: the real architecture code path, CPU-cheap.
ARCH = "channels=16,32,32,64"
TINY = create_model("resnet10", channels=(16, 32, 32, 64)).spec
# EMA on, so every resume test also checks that the averaged weights continue exactly.
SETS = ["epochs=4", "batch_size=50", "lr=0.2", "warmup_fraction=0.25", "cutout=8", "eval_every=2", "ema_decay=0.9"]
RECIPE = apply_overrides(get_recipe("fast"), SETS)


# Bit-exact comparisons need the same kernels in every run (fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model=TINY, recipe=RECIPE, data_dir=data, out_dir=out, device="cpu", progress=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def straight(synthetic_cifar: Path, tmp_path_factory: pytest.TempPathFactory):
    """Four epochs without interruption: the reference for every resume test."""
    out = tmp_path_factory.mktemp("straight") / "run"
    return fit(_cfg(synthetic_cifar, out))


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    """Saved (EMA) weights, and the raw weights and EMA in the final checkpoint, are bit-identical."""
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ca, cb = load_checkpoint(a / "checkpoint.safetensors"), load_checkpoint(b / "checkpoint.safetensors")
    for part in ("model", "ema"):
        assert ca[part].keys() == cb[part].keys()
        for k in ca[part]:
            assert torch.equal(ca[part][k], cb[part][k]), (part, k)


def test_learns_synthetic_classes_and_writes_every_output(straight) -> None:
    run = straight.run_dir
    assert straight.test_top1 >= 60.0, f"chance is 10%; got {straight.test_top1}"
    for name in ("model.safetensors", "metrics.jsonl", "curves.png", "recipe.json", "run.json",
                 "checkpoint.safetensors"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert "test_top1" not in rows[0] and "test_top1" in rows[1] and "test_top1" in rows[3]  # eval_every=2
    for key in ("train_loss", "train_top1", "lr", "epoch_seconds", "images_per_s"):
        assert all(key in r for r in rows), key
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    meta = read_metadata(run / "model.safetensors")
    assert json.loads(meta["test_top1"]) == pytest.approx(rows[-1]["test_top1"], abs=1e-3)  # final epoch
    assert json.loads(meta["epochs"]) == 4 and json.loads(meta["seed"]) == 0
    assert json.loads(meta["recipe"])["batch_size"] == 50 and meta["train_device"] == "cpu"
    for key in ("wall_time_s", "train_images_per_s", "torch_version", "subset", "test_loss"):
        assert key in meta, key
    assert json.loads((run / "recipe.json").read_text()) == RECIPE.to_dict()
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """Deliver a real SIGTERM to this process during the given optimizer step."""
    calls = {"n": 0}
    original = TrainStep.__call__

    def step(self, batch):
        calls["n"] += 1
        if calls["n"] == call:
            signal.raise_signal(signal.SIGTERM)
        return original(self, batch)

    monkeypatch.setattr(TrainStep, "__call__", step)


@pytest.mark.parametrize("call", [20, 27], ids=["epoch-boundary", "mid-epoch"])
def test_resume_after_sigterm_gives_identical_weights(straight, synthetic_cifar, tmp_path, monkeypatch, call) -> None:
    run = tmp_path / "run"
    _interrupt_at(monkeypatch, call)
    with pytest.raises(TrainingInterrupted, match="checkpoint saved in") as info:
        fit(_cfg(synthetic_cifar, run))
    monkeypatch.undo()
    assert info.value.run_dir == run
    ckpt = load_checkpoint(run / "checkpoint.safetensors")["info"]
    assert (ckpt["epoch"], ckpt["step"]) == ((2, 0) if call == 20 else (2, 7))
    assert ckpt["elapsed"]["images"] == (20 if call == 20 else 27) * 50  # a partial epoch counts too
    assert info.value.signum == signal.SIGTERM and not (run / "model.safetensors").exists()
    result = fit(TrainConfig(resume=run, data_dir=synthetic_cifar, device="cpu", progress=False))
    _assert_same_weights(run, straight.run_dir)
    assert result.test_top1 == straight.test_top1
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]


def test_sigterm_to_a_cli_subprocess_then_resume(straight, synthetic_cifar, tmp_path) -> None:
    """A real external SIGTERM against `python -m aperture_zoo.train`, then --resume.

    The child pauses 1 s after each checkpoint it writes (a test-only wrapper), so the signal sent on seeing the
    first one always lands mid-run, on a fast machine or a loaded one: the outcome never depends on timing."""
    run = tmp_path / "run"
    pause = ("import runpy, sys, time; import aperture_zoo.train.loop as L; save = L.checkpoint; "
             "L.checkpoint = lambda *a, **k: (save(*a, **k), time.sleep(1.0))[0]; "
             "sys.argv[0] = 'aperture_zoo.train'; runpy.run_module('aperture_zoo.train', run_name='__main__')")
    cmd = [sys.executable, "-c", pause, "resnet10", "--arch", ARCH, "--device", "cpu",
           "--data-dir", str(synthetic_cifar), "--out", str(run), "--no-progress"]
    for item in SETS:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300  # a bound for a hung child, not a timing: the loop ends at the first checkpoint
    while time.time() < deadline and not (run / "checkpoint.safetensors").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Continue with: aperture train --resume" in err
    assert load_checkpoint(run / "checkpoint.safetensors")["info"]["epoch"] < 4
    fit(TrainConfig(resume=run, data_dir=synthetic_cifar, device="cpu", progress=False))
    _assert_same_weights(run, straight.run_dir)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(synthetic_cifar, tmp_path,
                                                                               monkeypatch) -> None:
    real_lr = loop.lr_at
    monkeypatch.setattr(loop, "lr_at", lambda r, step, spe: real_lr(r, step, spe) if step < 10 else 1e30)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"became (nan|inf) in epoch 2.*Lower the learning rate") as info:
        fit(_cfg(synthetic_cifar, run, recipe=RECIPE.replace(epochs=3)))
    assert "epoch 1" in str(info.value) and str(run) in str(info.value)
    assert info.value.run_dir == run and info.value.recipe == RECIPE.replace(epochs=3)
    assert info.value.record["seed"] == 0 and info.value.record["device"] == "cpu"
    ckpt = load_checkpoint(run / "checkpoint.safetensors")
    assert (ckpt["info"]["epoch"], ckpt["info"]["step"]) == (1, 0)
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_resume_refuses_a_different_model_or_recipe(straight, synthetic_cifar) -> None:
    run = straight.run_dir
    with pytest.raises(RecipeError, match=r"different recipe \(lr: run 0.2 vs asked 0.4\).*only a lower --lr"):
        fit(TrainConfig(resume=run, recipe=RECIPE.replace(lr=0.4), data_dir=synthetic_cifar, progress=False))
    with pytest.raises(RecipeError, match=r"different recipe \(epochs: run 4 vs asked 5, lr: run 0.2 vs asked 0.1\)"):
        fit(TrainConfig(resume=run, recipe=RECIPE.replace(lr=0.1, epochs=5), data_dir=synthetic_cifar, progress=False))
    with pytest.raises(CheckpointError, match="cannot resume .* not resnet22"):
        fit(TrainConfig(resume=run, model="resnet22", data_dir=synthetic_cifar, progress=False))
    with pytest.raises(CheckpointError, match="seed=0"):
        fit(TrainConfig(resume=run, seed=3, data_dir=synthetic_cifar, progress=False))
    with pytest.raises(RunDirError, match="already holds a training run; continue it with --resume"):
        fit(_cfg(synthetic_cifar, run))


def test_bad_settings_and_missing_data_name_the_fix(synthetic_cifar, tmp_path) -> None:
    with pytest.raises(TrainingError, match="larger than the 500 training images.*--batch-size"):
        fit(_cfg(synthetic_cifar, tmp_path / "a", recipe=RECIPE.replace(batch_size=1000)))
    with pytest.raises(DataError, match="--data-dir.*--download"):
        fit(_cfg(tmp_path / "nothing-here", tmp_path / "b", download=False))
    with pytest.raises(CheckpointError, match="not a run directory"):
        fit(TrainConfig(resume=tmp_path / "nope", progress=False))


def test_corrupt_checkpoint_is_reported_not_unpickled(tmp_path) -> None:
    bad = tmp_path / "checkpoint.safetensors"
    bad.write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(bad)


def test_val_split_and_subset_are_stratified_and_held_out(synthetic_cifar, tmp_path) -> None:
    from aperture_zoo.train.loader import load_splits

    s = load_splits(synthetic_cifar, subset_size=300, val_split=0.2, test_subset=100, seed=1)
    assert (len(s.train), len(s.val), len(s.test)) == (240, 60, 100)
    assert torch.bincount(torch.from_numpy(s.val.labels)).tolist() == [6] * 10
    assert torch.bincount(torch.from_numpy(s.test.labels)).tolist() == [10] * 10
    train_rows = {r.tobytes() for r in s.train.images.reshape(240, -1)}
    assert not any(r.tobytes() in train_rows for r in s.val.images.reshape(60, -1))


class _Killed(BaseException):
    """Stands in for kill -9: unwinds without running any of the interrupted code after it."""


def test_kill_during_a_checkpoint_write_keeps_the_previous_one_and_resumes_exactly(
        straight, synthetic_cifar, tmp_path, monkeypatch) -> None:
    """Die half-way through writing epoch 3's checkpoint, and half-way through a metrics row.

    The file system then looks exactly as after a kill -9 at that moment: a truncated temp file
    beside the intact epoch-2 checkpoint. Resume must ignore both torn files and finish identically.
    """
    import safetensors.torch

    real_save = safetensors.torch.save_file
    saves = {"n": 0}

    def dying_save(tensors, filename, metadata=None):
        saves["n"] += 1
        real_save(tensors, filename, metadata=metadata)
        if saves["n"] == 3:
            size = os.path.getsize(filename)
            with open(filename, "r+b") as f:
                f.truncate(size // 2)
            raise _Killed

    monkeypatch.setattr(safetensors.torch, "save_file", dying_save)
    run = tmp_path / "run"
    with pytest.raises(_Killed):
        fit(_cfg(synthetic_cifar, run))
    monkeypatch.undo()
    assert [p.name for p in run.glob("checkpoint.safetensors.tmp*")], "the torn temp file should be there"
    assert load_checkpoint(run / "checkpoint.safetensors")["info"]["epoch"] == 2
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 4, "train_lo')  # a row cut off mid-append

    result = fit(TrainConfig(resume=run, data_dir=synthetic_cifar, device="cpu", progress=False))
    _assert_same_weights(run, straight.run_dir)
    assert result.test_top1 == straight.test_top1
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert not list(run.glob("*.tmp*"))


def test_non_finite_weights_are_never_checkpointed(synthetic_cifar, tmp_path, monkeypatch) -> None:
    """An update that overflows the weights on an epoch's last step, while that step's loss was finite."""
    original = TrainStep.__call__
    calls = {"n": 0}

    def step(self, batch):
        out = original(self, batch)
        calls["n"] += 1
        if calls["n"] == 20:  # last step of epoch 2
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("inf"))
        return out

    monkeypatch.setattr(TrainStep, "__call__", step)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"weights became nan/inf .* epoch 2, by step 10.*checkpoint \(epoch 1\)"):
        fit(_cfg(synthetic_cifar, run, recipe=RECIPE.replace(epochs=3)))
    ckpt = load_checkpoint(run / "checkpoint.safetensors")
    assert ckpt["info"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_resume_of_a_run_killed_before_its_first_checkpoint_says_to_start_again(straight, tmp_path) -> None:
    from typer.testing import CliRunner

    from aperture_zoo.cli import app

    run = tmp_path / "run"
    run.mkdir()
    for name in ("run.json", "recipe.json", "metrics.jsonl"):  # what a run has before epoch 1 ends
        (run / name).write_bytes((straight.run_dir / name).read_bytes())
    with pytest.raises(CheckpointError, match="stopped before its first checkpoint.*start it again") as info:
        fit(TrainConfig(resume=run, progress=False))
    assert info.value.run_dir == run and info.value.recipe == RECIPE
    r = CliRunner().invoke(app, ["train", "--resume", str(run), "--no-progress"])
    assert r.exit_code == 2, r.output
    assert re.search("stopped before its first checkpoint.*start it again in the same folder: `aperture train "
                     "resnet10 --arch channels=16,32,32,64 .*--out", " ".join(r.output.split())), r.output
    RunDir.check_new(run)  # ... and starting again in the same directory is allowed
    (run / "recipe.json").write_text('{"epochs": 4,')
    with pytest.raises(CheckpointError, match="recipe.json.*unreadable"):
        fit(TrainConfig(resume=run, progress=False))


def test_cli_resume_errors_are_one_line_not_a_traceback(tmp_path) -> None:
    from typer.testing import CliRunner

    from aperture_zoo.cli import app

    r = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "nope"), "--epochs", "5"])
    assert r.exit_code == 2 and "is not a run directory" in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_bad_subset_and_val_split_are_clear_cli_errors(synthetic_cifar, tmp_path) -> None:
    from typer.testing import CliRunner

    from aperture_zoo.cli import app

    base = ["train", "resnet10", "--arch", ARCH, "--data-dir", str(synthetic_cifar), "--device", "cpu",
            "--no-progress", "--out", str(tmp_path / "run")]
    for extra, message in ((["--subset", "0"], "1..500"), (["--subset", "600"], "1..500"),
                           (["--val-split", "500"], "leaves no training images"),
                           (["--val-split", "-0.1"], "--val-split must be")):
        r = CliRunner().invoke(app, [*base, *extra])
        assert r.exit_code == 2 and message in " ".join(r.output.split()), (extra, r.output)


def test_time_budget_stops_at_an_epoch_boundary_and_resumes_exactly(straight, synthetic_cifar, tmp_path) -> None:
    run = tmp_path / "run"
    with pytest.raises(TimeBudgetReached, match="time budget .* checkpoint saved in") as info:
        fit(_cfg(synthetic_cifar, run, time_budget_s=1e-3))  # one epoch always runs; the next would not fit
    assert info.value.epoch == 1 and info.value.run_dir == run
    assert load_checkpoint(run / "checkpoint.safetensors")["info"]["epoch"] == 1
    assert not (run / "model.safetensors").exists()
    # a budget that fits everything left: the run finishes as if it had never stopped
    fit(TrainConfig(resume=run, data_dir=synthetic_cifar, device="cpu", progress=False, time_budget_s=3600))
    _assert_same_weights(run, straight.run_dir)


def test_time_budget_must_be_positive(synthetic_cifar, tmp_path) -> None:
    with pytest.raises(TrainingError, match="--time-budget must be a positive"):
        fit(_cfg(synthetic_cifar, tmp_path / "run", time_budget_s=0))


# ----------------------------------------------------------------- run folders are never shared


SECOND = time.mktime((2025, 1, 1, 12, 0, 0, 0, 0, -1))  # 2025-01-01 12:00:00 local time


def test_default_run_folder_is_created_exclusively_by_fit(synthetic_cifar, tmp_path, monkeypatch) -> None:
    """The same second's folder already exists (another run's): fit takes the next name, not that one."""
    monkeypatch.chdir(tmp_path)
    taken = tmp_path / "runs" / "resnet10-20250101-120000"
    taken.mkdir(parents=True)
    (taken / "run.json").write_text('{"seed": 7}')
    result = fit(_cfg(synthetic_cifar, None, recipe=RECIPE.replace(epochs=1), seed=1, subset=100, test_subset=50,
                      started=SECOND))
    assert result.run_dir == Path("runs/resnet10-20250101-120000-2")
    assert json.loads((taken / "run.json").read_text()) == {"seed": 7}  # the other run is untouched
    assert json.loads((result.run_dir / "run.json").read_text())["seed"] == 1


def test_out_into_a_folder_that_holds_something_else_is_refused_first(tmp_path) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "cat.png").write_bytes(b"not ours")
    with pytest.raises(RunDirError, match=r"is not empty \(it holds 'cat.png'\).*choose a new or empty folder"):
        fit(_cfg(tmp_path / "no-data-here", out, download=False))  # refused before looking for data
    assert [p.name for p in out.iterdir()] == ["cat.png"]
    from typer.testing import CliRunner

    from aperture_zoo.cli import app

    r = CliRunner().invoke(app, ["train", "resnet10", "--out", str(out), "--no-download", "--data-dir",
                                 str(tmp_path / "no-data-here")])
    assert r.exit_code == 2 and "is not empty" in r.output and "Traceback" not in r.output, r.output


def test_a_run_folder_in_use_by_another_process_is_refused(synthetic_cifar, tmp_path) -> None:
    from filelock import FileLock

    from aperture_zoo.files import LOCK_FILENAME

    run = tmp_path / "run"
    run.mkdir()
    with FileLock(run / LOCK_FILENAME):  # what a training process holds while it runs
        with pytest.raises(RunDirError, match="in use by another training process"):
            fit(_cfg(synthetic_cifar, run, recipe=RECIPE.replace(epochs=1)))
    assert not (run / "run.json").exists()
    fit(_cfg(synthetic_cifar, run, recipe=RECIPE.replace(epochs=1), subset=100, test_subset=50))  # released: free


# ----------------------------------------------------------------- resume restores every option


def test_resume_alone_continues_with_the_options_the_run_was_started_with(synthetic_cifar, tmp_path,
                                                                          monkeypatch) -> None:
    """The tool's own hint, `aperture train --resume DIR`, works without repeating --data-dir etc."""
    import shlex

    from typer.testing import CliRunner

    from aperture_zoo import data
    from aperture_zoo.cli import app

    monkeypatch.delenv("APERTURE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))  # the default folder has no data

    def offline(data_dir=None):
        raise DataError("offline")

    monkeypatch.setattr(data, "download", offline)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run dir"  # a space: the hint must quote it
    args = ["train", "resnet10", "--arch", ARCH, "--data-dir", str(synthetic_cifar), "--no-download",
            "--device", "cpu", "--no-progress", "--out", str(run), "--time-budget", "0.001",
            *[x for s in SETS for x in ("--set", s)], "--set", "epochs=2"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 75, first.output  # paused by the time budget after epoch 1
    saved = json.loads((run / "run.json").read_text())
    assert saved["data_dir"] == str(synthetic_cifar.resolve())
    assert (saved["download"], saved["device"], saved["compile"]) == (False, "cpu", False)
    hint = re.search(r"Continue with: (aperture train --resume .*)$", " ".join(first.output.split()))
    assert hint, first.output
    second = CliRunner().invoke(app, [*shlex.split(hint.group(1))[1:], "--no-progress"])
    assert second.exit_code == 0, second.output
    assert (run / "model.safetensors").is_file()
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_the_divergence_hint_is_a_command_that_works(synthetic_cifar, tmp_path, monkeypatch) -> None:
    """Diverge, then type the suggested command: it trains the same run again with half the lr."""
    import shlex

    from typer.testing import CliRunner

    from aperture_zoo.cli import app

    monkeypatch.chdir(tmp_path)
    # the fast recipe at batch 50 scales its lr to 0.0390625
    args = ["train", "resnet10", "--arch", ARCH, "--set", "epochs=2", "--set", "batch_size=50", "--set", "cutout=0",
            "--seed", "5", "--subset", "200", "--test-subset", "50", "--data-dir", str(synthetic_cifar),
            "--no-download", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "diverged")]
    real_lr = loop.lr_at
    with monkeypatch.context() as m:
        m.setattr(loop, "lr_at", lambda r, step, spe: real_lr(r, step, spe) if step < 4 else 1e30)  # from epoch 2
        first = CliRunner().invoke(app, args)
    assert first.exit_code == 2 and "Resume from the last good checkpoint with half the lr" in first.output, first.output
    resume, retry = re.findall(r"`(aperture train [^`]+)`", " ".join(first.output.split()))
    # the first command resumes the diverged run from its last good checkpoint (epoch 1) with half the lr
    argv = shlex.split(resume)
    assert argv[argv.index("--resume") + 1] == str(tmp_path / "diverged") and argv[argv.index("--lr") + 1] == "0.0195312"
    r = CliRunner().invoke(app, [*argv[1:], "--no-progress"])
    assert r.exit_code == 0, r.output
    resumed = json.loads((tmp_path / "diverged" / "run.json").read_text())
    assert resumed["lr_changes"] == [{"epoch": 1, "step": 0, "lr": 0.0195312, "was": 0.0390625}]
    assert json.loads((tmp_path / "diverged" / "recipe.json").read_text())["lr"] == 0.0195312
    from aperture_zoo.weights import decode_metadata, read_metadata

    meta = decode_metadata(read_metadata(tmp_path / "diverged" / "model.safetensors"))
    assert meta["lr_changes"] == resumed["lr_changes"] and meta["recipe"]["lr"] == 0.0195312
    # the second starts it again with half the lr
    argv = shlex.split(retry)
    assert "--out" not in argv and argv[argv.index("--lr") + 1] == "0.0195312"
    r = CliRunner().invoke(app, [*argv[1:], "--no-progress"])
    assert r.exit_code == 0, r.output
    (new,) = list((tmp_path / "runs").iterdir())
    again = json.loads((new / "recipe.json").read_text())
    before = json.loads((tmp_path / "diverged" / "recipe.json").read_text())
    assert again["lr"] == 0.0195312
    assert {k: v for k, v in again.items() if not k.startswith(("lr", "reference_"))} == \
        {k: v for k, v in before.items() if not k.startswith(("lr", "reference_"))}
    run_new = json.loads((new / "run.json").read_text())
    run_old = json.loads((tmp_path / "diverged" / "run.json").read_text())
    for key in ("arch", "seed", "subset", "test_subset", "val_split", "data_dir", "download", "device"):
        assert run_new[key] == run_old[key], key


def test_resuming_a_finished_run_changes_nothing(straight, synthetic_cifar) -> None:
    """Found by a user: --resume of a complete run re-evaluated and rewrote its weights and curves."""
    run = straight.run_dir
    before = {f: (run / f).stat().st_mtime_ns for f in ("model.safetensors", "curves.png", "metrics.jsonl")}
    again = fit(TrainConfig(resume=run, data_dir=synthetic_cifar, device="cpu", progress=False))
    assert again.already_complete and again.test_top1 == pytest.approx(straight.test_top1, abs=1e-3)
    assert before == {f: (run / f).stat().st_mtime_ns for f in before}


def test_the_final_epoch_is_recorded_even_when_an_earlier_epoch_scored_higher(synthetic_cifar, tmp_path,
                                                                            monkeypatch) -> None:
    """metadata, summary and card carry the last epoch's accuracy, never the best one.

    The synthetic run's last epoch is usually also its best, so the evaluations are given a
    constructed history: epoch 2 reports 100 %, the final epoch 3 reports 42 %. A recorder that
    picked the best epoch would record 100. With eval_every=2 the last epoch is evaluated only
    because it is the last.
    """
    from aperture_zoo.cards import write_card
    from aperture_zoo.train.zoo import write_summary

    original, history = loop.evaluate_epoch, [100.0, 42.0]

    def constructed(*args, **kwargs):
        out = original(*args, **kwargs)
        out.update(test_top1=history.pop(0))
        return out

    monkeypatch.setattr(loop, "evaluate_epoch", constructed)
    run = tmp_path / "runs" / "resnet10"
    result = fit(_cfg(synthetic_cifar, run, subset=200,
                      recipe=apply_overrides(RECIPE, ["epochs=3", "eval_every=2", "ema_decay=0"])))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("test_top1") for r in rows] == [None, 100.0, 42.0] and not history
    final = rows[-1]["test_top1"]
    assert result.test_top1 == pytest.approx(final, abs=1e-3)
    assert json.loads(read_metadata(run / "model.safetensors")["test_top1"]) == pytest.approx(final, abs=1e-3)
    summary = write_summary(run.parent)
    assert [r["top1"] for r in summary.rows] == [pytest.approx(final, abs=1e-3)]
    card = write_card("resnet10", tmp_path / "card", run_dir=run)
    assert json.loads((card / "config.json").read_text())["metrics"]["top1"] == pytest.approx(final, abs=1e-3)
    assert f"Final-epoch top-1 accuracy: **{final:.2f}%** (epoch 3" in (card / "README.md").read_text()


SHORT = apply_overrides(RECIPE, ["epochs=2", "eval_every=1", "ema_decay=0"])


@pytest.fixture(scope="module")
def half_run(synthetic_cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of two epochs stopped (time budget) after its first checkpoint: epoch 1 logged and checkpointed."""
    run = tmp_path_factory.mktemp("half") / "run"
    with pytest.raises(TimeBudgetReached):
        fit(_cfg(synthetic_cifar, run, subset=100, recipe=SHORT, time_budget_s=1e-3))
    return run


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.lock"))
    return dst


def test_resume_refuses_a_log_changed_since_the_checkpoint(half_run, synthetic_cifar, tmp_path, capsys) -> None:
    """Hostile try 8, F3a: a log replaced by another run's, or a row rewritten, was carried on by resume, and the
    final weights then pinned it (metrics_sha256), so card and push shipped it as this run's history."""
    from typer.testing import CliRunner

    from aperture_zoo.cli import app
    from aperture_zoo.files import file_sha256

    forged = _copy_run(half_run, tmp_path / "forged")
    row = json.loads((forged / "metrics.jsonl").read_text())
    (forged / "metrics.jsonl").write_text(json.dumps({**row, "test_top1": 100.0}) + "\n")
    r = CliRunner().invoke(app, ["train", "--resume", str(forged), "--data-dir", str(synthetic_cifar), "--no-progress"])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and f"cannot resume {str(forged)!r}: {forged / 'metrics.jsonl'} was changed since the " \
        "checkpoint (epoch 1)" in text and "put back this run's own metrics.jsonl, or start a new run" in text, text
    assert not (forged / "model.safetensors").exists()
    (forged / "metrics.jsonl").unlink()
    with pytest.raises(CheckpointError, match="metrics.jsonl is missing since the checkpoint"):
        fit(TrainConfig(resume=forged, data_dir=synthetic_cifar, progress=False))
    # a row torn by a kill mid-append (an epoch after the checkpoint) is dropped with a note; the log is still its own
    run = _copy_run(half_run, tmp_path / "torn")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 2, "train_lo')
    capsys.readouterr()
    fit(TrainConfig(resume=run, data_dir=synthetic_cifar, progress=False))
    assert "1 line(s) cut off mid-write" in " ".join(capsys.readouterr().err.split())
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    meta = read_metadata(run / "model.safetensors")
    assert meta["metrics_sha256"].strip('"') == file_sha256(run / "metrics.jsonl")


def test_a_complete_run_draws_missing_curves_only_from_the_log_its_weights_pin(half_run, synthetic_cifar, tmp_path,
                                                                               capsys) -> None:
    """Hostile try 8, F3b: resume of a complete run drew a missing curves.png from another run's log and stamped
    these weights' SHA-256 on it."""
    run = _copy_run(half_run, tmp_path / "run")
    fit(TrainConfig(resume=run, data_dir=synthetic_cifar, progress=False))
    own = (run / "metrics.jsonl").read_text()
    (run / "curves.png").unlink()
    rows = [json.loads(x) for x in own.splitlines()]
    rows[0]["train_loss"] += 1.0  # the last test figure still matches the weights: only the pin tells them apart
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    again = fit(TrainConfig(resume=run, data_dir=synthetic_cifar, progress=False))
    assert again.already_complete and not again.drew_curves and not (run / "curves.png").exists()
    assert "curves.png not drawn" in capsys.readouterr().err
    (run / "metrics.jsonl").write_text(own)
    assert fit(TrainConfig(resume=run, data_dir=synthetic_cifar, progress=False)).drew_curves
