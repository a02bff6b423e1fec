"""The long and sprint recipes' parts: alternating flip, evaluation only at the end, the flip-TTA figure
kept apart from the final-epoch top-1, and several seeds with mean ± std."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.model import create_model
from aperture_zoo.train import TrainConfig, apply_overrides, fit, get_recipe
from aperture_zoo.train.augment import AugmentConfig, alternating_flips, flip_phase
from aperture_zoo.train.evaluate import evaluate
from aperture_zoo.train.loader import DeviceSplit
from aperture_zoo.train.recipes import RecipeError
from aperture_zoo.train.seeds import format_mean_std, mean_std
from aperture_zoo.train.stream import BatchStream
from aperture_zoo.train.zoo import ZooConfig, train_zoo
from aperture_zoo.data import load_split, subset
from aperture_zoo.weights import decode_metadata, load_weights, read_metadata

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = create_model("resnet10", channels=(16, 32, 32, 64)).spec
SETS = ["batch_size=50", "lr=0.2", "warmup_fraction=0.25", "cutout=0"]


def test_new_recipes_are_valid_and_declare_what_they_do() -> None:
    long, sprint, fast = get_recipe("long"), get_recipe("sprint"), get_recipe("fast")
    assert long.validate() and sprint.validate()
    assert (long.epochs, long.cutout, long.label_smoothing, long.optimizer, long.nesterov) == (180, 16, 0.1, "sgd", True)
    assert long.ema_decay > 0 and long.schedule == "cosine" and long.final_tta
    assert (sprint.batch_size, sprint.alternating_flip, sprint.eval_every, sprint.final_tta) == (1024, True, 0, True)
    assert sprint.lr == pytest.approx(fast.lr * 2)  # the linear rule from fast's 0.4 at 512
    assert not fast.alternating_flip and not fast.final_tta and fast.eval_every == 1  # fast unchanged


@pytest.mark.parametrize("sets, message", [
    (["flip=false", "alternating_flip=true"], "alternating_flip needs flip=true"),
    (["eval_every=-1"], "eval_every must be >= 0"),
    (["alternating_flip=maybe"], "expected true or false"),
    (["final_tta=2"], "expected true or false"),
])
def test_new_fields_are_validated(sets: list[str], message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        apply_overrides(get_recipe("fast"), sets)


def test_new_fields_parse_from_set() -> None:
    r = apply_overrides(get_recipe("fast"), ["alternating_flip=yes", "final_tta=1", "eval_every=0"])
    assert (r.alternating_flip, r.final_tta, r.eval_every) == (True, True, 0)
    assert AugmentConfig.from_recipe(r).alternating_flip


def test_alternating_flip_alternates_per_image_with_a_random_phase() -> None:
    n = 400
    phase = flip_phase(n, seed=3)
    idx = torch.arange(n)
    flips = torch.stack([alternating_flips(idx, e, phase) for e in range(6)])
    assert (flips[1:] != flips[:-1]).all()        # every image: flipped exactly on alternate epochs
    assert 0.35 < flips[0].float().mean() < 0.65  # the first epoch mirrors a random half ...
    assert not torch.equal(flip_phase(n, seed=4), phase)  # ... that depends on the seed
    assert torch.equal(flip_phase(n, seed=3), phase)       # and only on it (resume, DDP ranks)


def test_batch_stream_mirrors_each_image_on_alternate_epochs() -> None:
    """Through the real stream: an image with a marker in its left column is seen mirrored every other epoch."""
    n = 60
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(1, n + 1, dtype=torch.uint8)  # the image's id, in its top-left pixel
    split = DeviceSplit(images, torch.arange(n) % 10, tuple(str(i) for i in range(10)))
    aug = AugmentConfig(crop_padding=0, flip=True, alternating_flip=True)
    stream = BatchStream(split, 20, aug, torch.zeros(3), torch.ones(3), 10, seed=5)
    seen: dict[int, list[bool]] = {i: [] for i in range(n)}
    for epoch in range(4):
        for _, batch in stream.epoch(epoch):
            px = (batch.inputs[:, 0, 0] * 255).round().long()  # row 0 of channel 0
            for row in px:
                left, right = int(row[0]), int(row[-1])
                assert (left == 0) != (right == 0)
                seen[left + right - 1].append(right > 0)
    assert all(len(v) == 4 for v in seen.values())
    assert all(v[0] != v[1] != v[2] != v[3] for v in seen.values())
    assert {v[0] for v in seen.values()} == {True, False}  # the phase differs between images


def test_final_tta_is_recorded_apart_from_the_final_epoch_top1(synthetic_cifar: Path, tmp_path: Path) -> None:
    recipe = apply_overrides(get_recipe("fast"), [*SETS, "epochs=2", "eval_every=0", "final_tta=true"])
    res = fit(TrainConfig(model=TINY, recipe=recipe, data_dir=synthetic_cifar, download=False, subset=200,
                          test_subset=100, device="cpu", out_dir=tmp_path / "run", progress=False))
    rows = res.metrics
    assert "test_top1" not in rows[0]  # eval_every=0: only the final epoch is tested
    assert rows[-1]["test_top1"] == res.test_top1 and rows[-1]["test_top1_flip_tta"] == res.test_top1_flip_tta
    meta = decode_metadata(read_metadata(res.run_dir / "model.safetensors"))
    test = subset(load_split("test", synthetic_cifar), 100, 0)
    model = load_weights(create_model(TINY), res.run_dir / "model.safetensors")
    plain, flipped = evaluate(model, test, tta=False), evaluate(model, test, tta=True)
    assert meta["test_top1"] == pytest.approx(plain.top1, abs=1e-3)      # test_top1: the plain forward pass
    assert meta["test_top1_flip_tta"] == pytest.approx(flipped.top1, abs=1e-3)  # TTA under its own name
    assert rows[-1]["test_loss"] == pytest.approx(plain.loss, rel=1e-4)  # and the two come from different
    assert rows[-1]["test_loss_flip_tta"] == pytest.approx(flipped.loss, rel=1e-4)  # predictions
    assert abs(plain.loss - flipped.loss) > 1e-4


def test_mean_std() -> None:
    assert mean_std([]) == (None, None)
    assert mean_std([94.0]) == (94.0, None)
    mean, std = mean_std([94.0, 95.0, 96.5])
    assert mean == pytest.approx(95.1666666) and std == pytest.approx(statistics.stdev([94.0, 95.0, 96.5]))
    assert format_mean_std([94.0, 95.0]) == "94.50 ± 0.71 (n=2)"


def test_train_seeds_makes_n_runs_and_reports_mean_std(synthetic_cifar: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    args = ["train", "resnet10", "--arch", "channels=16,32,32,64", "--seeds", "2", "--seed", "7", "--out", str(out),
            "--data-dir", str(synthetic_cifar), "--no-download", "--subset", "100", "--test-subset", "100",
            "--device", "cpu", "--no-progress", "--json", *[a for s in [*SETS, "epochs=1"] for a in ("--set", s)]]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [run["seed"] for run in doc["runs"]] == [7, 8] and doc["n"] == 2
    for run in doc["runs"]:
        assert Path(run["run_dir"]) == out / f"seed{run['seed']}"
        assert json.loads((out / f"seed{run['seed']}" / "run.json").read_text())["seed"] == run["seed"]
    top1 = [run["test_top1"] for run in doc["runs"]]
    assert doc["test_top1_mean"] == pytest.approx(statistics.fmean(top1))
    assert doc["test_top1_std"] == pytest.approx(statistics.stdev(top1))


def test_train_seeds_refuses_bad_counts_and_resume(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["train", "resnet10", "--seeds", "0"])
    assert r.exit_code == 2 and "--seeds must be at least 1" in r.output
    r = CliRunner().invoke(app, ["train", "--resume", str(tmp_path), "--seeds", "2"])
    assert r.exit_code == 2 and "--resume continues runs as they were started" in r.output


def test_train_zoo_seeds_summary_gives_mean_and_std(synthetic_cifar: Path, tmp_path: Path) -> None:
    recipe = apply_overrides(get_recipe("fast"), [*SETS, "epochs=1", "batch_size=25"])
    runs = tmp_path / "zoo"
    res = train_zoo(ZooConfig(models=["resnet10"], runs_dir=runs, recipe=recipe, data_dir=synthetic_cifar,
                              download=False, device="cpu", subset=50, test_subset=50, progress=False, seeds=2),
                    say=lambda _m: None)
    assert res.complete
    assert (runs / "resnet10" / "model.safetensors").exists() and (runs / "resnet10-seed1" / "model.safetensors").exists()
    doc = json.loads((runs / "summary.json").read_text())
    assert [(r["model"], r["seed"]) for r in doc["models"]] == [("resnet10", 0), ("resnet10", 1)]
    [stats] = doc["seeds"]
    top1 = [r["top1"] for r in doc["models"]]
    assert stats["n"] == 2 and stats["seeds"] == [0, 1]
    assert stats["top1_mean"] == pytest.approx(statistics.fmean(top1))
    assert stats["top1_std"] == pytest.approx(statistics.stdev(top1))
    md = (runs / "summary.md").read_text()
    assert f"| resnet10 | 2 (0, 1) | {stats['top1_mean']:.2f} ± {stats['top1_std']:.2f} |" in md
