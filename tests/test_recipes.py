"""Recipes: the lr follows the batch size by the linear rule unless it is given, everywhere."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.train import apply_overrides, get_recipe
from aperture_zoo.train.recipes import FAST, Recipe, RecipeError, scale_lr_for_batch


def test_a_new_batch_size_scales_the_fast_lr_linearly() -> None:
    small = apply_overrides(FAST, {"batch_size": 64})
    assert small.lr == 0.05 and small.batch_size == 64  # 0.4 for 512 -> 0.05 for 64 (0.1 per 128)
    assert (small.reference_lr, small.reference_batch_size) == (0.4, 512)
    assert apply_overrides(FAST, ["batch_size=1024"]).lr == 0.8
    assert apply_overrides(small, {"batch_size": 512}).lr == 0.4  # always from the reference, no drift
    assert "0.4 for batch 512, scaled linearly to batch 64" in small.lr_note()
    assert FAST.lr_note() is None and apply_overrides(FAST, {"epochs": 3}).lr == 0.4


@pytest.mark.parametrize("overrides", [
    {"batch_size": 64, "lr": 0.1},
    ["lr=0.1", "batch_size=64"],
])
def test_an_explicit_lr_wins_and_drops_the_reference(overrides) -> None:
    chosen = apply_overrides(FAST, overrides)
    assert (chosen.lr, chosen.batch_size) == (0.1, 64)
    assert chosen.reference_lr is None and chosen.reference_batch_size is None and chosen.lr_note() is None
    # the CLI applies --set first and the flags after: an explicit lr wins in either order
    assert apply_overrides(apply_overrides(FAST, ["lr=0.1"]), {"batch_size": 64}).lr == 0.1
    assert apply_overrides(apply_overrides(FAST, ["batch_size=64"]), {"lr": 0.1}).lr == 0.1


def test_recipes_without_a_reference_keep_their_lr() -> None:
    paper = get_recipe("paper")  # Adadelta: the linear rule is an SGD rule
    assert apply_overrides(paper, {"batch_size": 128}).lr == paper.lr
    assert scale_lr_for_batch(0.4, 512, 50) == 0.0390625


def test_a_silently_inconsistent_recipe_is_refused() -> None:
    stale = dataclasses.replace(FAST, batch_size=64)  # bypasses Recipe.replace: lr still 0.4
    with pytest.raises(RecipeError, match="lr 0.4 does not follow its reference"):
        stale.validate()
    with pytest.raises(RecipeError, match="go together"):
        dataclasses.replace(FAST, reference_lr=None).validate()
    with pytest.raises(RecipeError, match="unknown recipe field 'reference_lr'"):
        apply_overrides(FAST, ["reference_lr=1"])


def test_a_recipe_json_from_before_the_reference_still_matches() -> None:
    old = {k: v for k, v in FAST.to_dict().items() if not k.startswith("reference_")}
    loaded = Recipe.from_dict(old).validate()
    assert loaded == FAST and loaded.differences(FAST) == []  # the record is not a setting
    assert loaded.reference_lr is None


def _captured(monkeypatch: pytest.MonkeyPatch, target: str) -> list:
    import aperture_zoo.train as train_pkg
    import aperture_zoo.train.zoo as zoo_mod

    seen: list = []

    def fake(cfg, *args, **kwargs):  # noqa: ANN001
        seen.append(cfg.recipe)
        raise SystemExit(0)

    monkeypatch.setattr(train_pkg if target == "fit" else zoo_mod, target, fake)
    return seen


@pytest.mark.parametrize("args, lr", [
    (["train", "resnet10", "--batch-size", "64"], 0.05),
    (["train", "resnet10", "--set", "batch_size=64"], 0.05),
    (["train", "resnet10", "--batch-size", "64", "--lr", "0.1"], 0.1),
    (["train", "resnet10", "--set", "lr=0.1", "--batch-size", "64"], 0.1),
    (["train-zoo", "resnet10", "--set", "batch_size=64"], 0.05),
    (["train-zoo", "resnet10", "--set", "batch_size=64", "--set", "lr=0.1"], 0.1),
])
def test_train_and_train_zoo_scale_the_lr_the_same_way(monkeypatch: pytest.MonkeyPatch, args, lr) -> None:
    seen = _captured(monkeypatch, "fit" if args[0] == "train" else "train_zoo")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen[0].lr == lr and seen[0].batch_size == 64
    assert ("scaled linearly to batch 64" in result.output) == (lr == 0.05)


def test_recipe_json_records_the_scaled_lr_and_where_it_came_from(synthetic_cifar: Path, tmp_path: Path) -> None:
    """`aperture train --batch-size 50` on a tiny model: one epoch, and recipe.json says what was used."""
    run = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "resnet10", "--arch", "channels=8,16,16,32", "--batch-size", "50", "--epochs", "1",
        "--data-dir", str(synthetic_cifar), "--device", "cpu", "--subset", "100", "--test-subset", "50",
        "--no-progress", "--out", str(run)])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "recipe.json").read_text())
    assert saved["lr"] == 0.0390625 and saved["batch_size"] == 50
    assert (saved["reference_lr"], saved["reference_batch_size"]) == (0.4, 512)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["lr"] for r in rows) <= 0.0390625


def test_cli_train_rejects_unknown_recipe_fields(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["train", "resnet10", "--set", "lr_peak=1"])
    assert r.exit_code == 2 and "unknown recipe field 'lr_peak'" in r.output
    r = CliRunner().invoke(app, ["train", "resnet10", "--recipe", "fats"])
    assert r.exit_code == 2 and "Did you mean 'fast'" in r.output


def test_recipes_are_the_documented_data() -> None:
    from aperture_zoo.train import RECIPES

    paper, table1, fast = RECIPES["paper"], RECIPES["table1"], RECIPES["fast"]
    assert (paper.optimizer, paper.lr, paper.batch_size, paper.epochs, paper.schedule) == ("adadelta", 0.1, 64, 300,
                                                                                            "constant")
    assert paper.mixup_alpha > 0 and paper.weight_decay == 5e-4 and paper.crop_padding == 4 and paper.flip
    assert (table1.batch_size, table1.epochs, table1.mixup_alpha) == (32, 20, 0.0)
    assert fast.epochs <= paper.epochs // 10 and fast.optimizer == "sgd" and fast.nesterov


@pytest.mark.parametrize("args, message", [
    (["--lr", "inf"], "lr must be a finite number > 0"),
    (["--lr", "nan"], "--lr must be greater than 0, got nan"),
    (["--set", "momentum=nan"], "momentum must be in [0, 1)"),
    (["--set", "momentum=1.5"], "momentum must be in [0, 1)"),
    (["--set", "weight_decay=-5"], "weight_decay must be a finite number >= 0"),
    (["--set", "final_lr_fraction=2"], "final_lr_fraction must be in [0, 1]"),
    (["--set", "mixup_alpha=inf"], "mixup_alpha must be a finite number >= 0"),
    (["--set", "eval_batch_size=-1"], "eval_batch_size must be >= 1"),  # eleventh try, X6: scored no image, "0.00%"
    (["--set", "eval_batch_size=0"], "eval_batch_size must be >= 1"),  # and a traceback after training
])
def test_a_recipe_value_that_cannot_train_is_refused_before_training(tmp_path: Path, args: list[str],
                                                                     message: str) -> None:
    """Regression (tenth hostile try, X7): weight_decay=-5 and final_lr_fraction=2 trained to "done"; --lr inf
    and momentum=nan trained until the loss blew up, then suggested a command that kept them."""
    r = CliRunner().invoke(app, ["train", "resnet10", *args, "--device", "cpu", "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "run").exists()
