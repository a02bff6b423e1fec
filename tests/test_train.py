"""The training loop on tiny synthetic CIFAR: learning, outputs, exact resume, SIGTERM, NaN stop, errors."""

from __future__ import annotations

import json
import os
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
from aperture_zoo.train import TrainConfig, TrainingError, TrainingInterrupted, apply_overrides, fit, get_recipe
from aperture_zoo.train import loop
from aperture_zoo.train.checkpoint import CheckpointError, load_checkpoint
from aperture_zoo.train.recipes import RecipeError
from aperture_zoo.weights import read_metadata

# A 98k-parameter derivative of resnet10: the real architecture code path, CPU-cheap.
ARCH = "channels=16,32,32,64"
TINY = create_model("resnet10", channels=(16, 32, 32, 64)).spec
SETS = ["epochs=4", "batch_size=50", "lr=0.2", "warmup_fraction=0.25", "cutout=8", "eval_every=2"]
RECIPE = apply_overrides(get_recipe("fast"), SETS)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Bit-exact comparisons need the same kernels in every run, and 2 shared cores prefer 1 thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


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
    original = loop.TrainStep.__call__

    def step(self, batch):
        calls["n"] += 1
        if calls["n"] == call:
            signal.raise_signal(signal.SIGTERM)
        return original(self, batch)

    monkeypatch.setattr(loop.TrainStep, "__call__", step)


@pytest.mark.parametrize("call", [20, 27], ids=["epoch-boundary", "mid-epoch"])
def test_resume_after_sigterm_gives_identical_weights(straight, synthetic_cifar, tmp_path, monkeypatch, call) -> None:
    run = tmp_path / "run"
    _interrupt_at(monkeypatch, call)
    with pytest.raises(TrainingInterrupted, match="--resume") as info:
        fit(_cfg(synthetic_cifar, run))
    monkeypatch.undo()
    ckpt = load_checkpoint(run / "checkpoint.safetensors")["info"]
    assert (ckpt["epoch"], ckpt["step"]) == ((2, 0) if call == 20 else (2, 7))
    assert info.value.signum == signal.SIGTERM and not (run / "model.safetensors").exists()
    result = fit(TrainConfig(resume=run, data_dir=synthetic_cifar, device="cpu", progress=False))
    _assert_same_weights(run, straight.run_dir)
    assert result.test_top1 == straight.test_top1
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]


def test_sigterm_to_a_cli_subprocess_then_resume(straight, synthetic_cifar, tmp_path) -> None:
    """A real external SIGTERM against `python -m aperture_zoo.train`, then --resume."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "aperture_zoo.train", "resnet10", "--arch", ARCH, "--device", "cpu",
           "--data-dir", str(synthetic_cifar), "--out", str(run), "--no-progress"]
    for item in SETS:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
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
    with pytest.raises(TrainingError, match=r"became (nan|inf) in epoch 2.*Lower --lr") as info:
        fit(_cfg(synthetic_cifar, run, recipe=RECIPE.replace(epochs=3)))
    assert "epoch 1" in str(info.value) and str(run) in str(info.value)
    ckpt = load_checkpoint(run / "checkpoint.safetensors")
    assert (ckpt["info"]["epoch"], ckpt["info"]["step"]) == (1, 0)
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_resume_refuses_a_different_model_or_recipe(straight, synthetic_cifar) -> None:
    run = straight.run_dir
    with pytest.raises(RecipeError, match=r"different recipe \(lr: run 0.2 vs asked 0.1\)"):
        fit(TrainConfig(resume=run, recipe=RECIPE.replace(lr=0.1), data_dir=synthetic_cifar, progress=False))
    with pytest.raises(CheckpointError, match="cannot resume .* not resnet22"):
        fit(TrainConfig(resume=run, model="resnet22", data_dir=synthetic_cifar, progress=False))
    with pytest.raises(CheckpointError, match="seed=0"):
        fit(TrainConfig(resume=run, seed=3, data_dir=synthetic_cifar, progress=False))
    with pytest.raises(TrainingError, match="already holds a training run; continue it with --resume"):
        fit(_cfg(synthetic_cifar, run))


def test_bad_settings_and_missing_data_name_the_fix(synthetic_cifar, tmp_path) -> None:
    with pytest.raises(TrainingError, match="larger than the 500 training images.*--batch-size"):
        fit(_cfg(synthetic_cifar, tmp_path / "a", recipe=RECIPE.replace(batch_size=1000)))
    with pytest.raises(DataError, match="--data-dir.*--download"):
        fit(_cfg(tmp_path / "nothing-here", tmp_path / "b"))
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
