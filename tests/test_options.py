"""Option rules shared by `aperture train`, `train-zoo` and torchrun, tested without the CLI."""

from __future__ import annotations

import json

import pytest

from aperture_zoo.registry import SpecError
from aperture_zoo.train.options import model_from_options, parse_arch, recipe_from_options
from aperture_zoo.train.recipes import get_recipe


def test_named_recipe_then_set_then_flags(tmp_path) -> None:
    r = recipe_from_options("fast", ["epochs=3", "cutout=0"], {"epochs": 5, "lr": None})
    assert (r.name, r.epochs, r.cutout, r.lr) == ("fast", 5, 0, get_recipe("fast").lr)  # None flags are "not given"


def test_resume_keeps_the_saved_recipe_unless_something_changes(tmp_path) -> None:
    saved = get_recipe("fast").replace(epochs=7)
    (tmp_path / "recipe.json").write_text(json.dumps(saved.to_dict()))
    assert recipe_from_options(None, [], {"epochs": None}, resume=tmp_path) is None
    changed = recipe_from_options(None, ["cutout=0"], {}, resume=tmp_path)
    assert changed.epochs == 7 and changed.cutout == 0  # the run's recipe, not the default one


def test_arch_derives_a_checked_spec() -> None:
    assert parse_arch(["channels=8,16,16,32", "num_classes=100"]) == {"channels": (8, 16, 16, 32), "num_classes": 100}
    spec = model_from_options("resnet10", ["channels=8,16,16,32"])
    assert spec.channels == (8, 16, 16, 32) and spec.report_params is None  # no longer Table 1's model
    assert model_from_options("resnet10", []) == "resnet10"
    with pytest.raises(SpecError, match="one entry per stage"):
        model_from_options("resnet10", ["channels=1,2"])


@pytest.mark.parametrize("flags, message", [
    ({"batch_size": -4}, "--batch-size must be at least 1, got -4"),
    ({"epochs": 0}, "--epochs must be at least 1, got 0"),
    ({"lr": 0.0}, "--lr must be greater than 0, got 0"),
    ({"label_smoothing": 1.0}, "--label-smoothing must be in [0, 1), got 1"),
])
def test_flag_errors_name_the_flag(flags, message) -> None:
    """Found by a user: --batch-size -4 gave three errors ending in library advice (Recipe.replace)."""
    from aperture_zoo.train.recipes import RecipeError

    with pytest.raises(RecipeError) as info:
        recipe_from_options("fast", [], flags)
    assert str(info.value) == message
