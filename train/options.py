"""Command-line options turned into library objects, so the CLI only parses, calls and prints.

``aperture train``, ``aperture train-zoo`` and ``torchrun -m aperture_zoo.train`` share these rules:
which recipe a run gets (a named recipe, or on ``--resume`` the run's own, with overrides applied
in one order: ``--set`` first, then the dedicated flags) and which architecture ``--arch`` derives.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aperture_zoo.model import create_model
from aperture_zoo.registry import ModelSpec, SpecError

from .recipes import Recipe, RecipeError, apply_overrides, get_recipe
from .rundir import RunDir


def recipe_from_options(
    recipe: str | None = None,
    sets: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    resume: str | os.PathLike[str] | None = None,
) -> Recipe | None:
    """The recipe to train with; None means "as saved" when resuming with nothing changed."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    _check_flags(overrides)
    if resume is not None and recipe is None and not overrides and not sets:
        return None
    base = RunDir(Path(resume)).recipe() if resume is not None and recipe is None else get_recipe(recipe or "fast")
    return apply_overrides(apply_overrides(base, list(sets or [])), overrides)


# The dedicated flags' rules, checked first so an error names the flag the user typed.
_FLAG_RULES: dict[str, tuple[str, Any, str]] = {
    "epochs": ("--epochs", lambda v: v >= 1, "at least 1"),
    "batch_size": ("--batch-size", lambda v: v >= 1, "at least 1"),
    "lr": ("--lr", lambda v: v > 0, "greater than 0"),
    "weight_decay": ("--weight-decay", lambda v: v >= 0, "at least 0"),
    "label_smoothing": ("--label-smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
    "mixup_alpha": ("--mixup", lambda v: v >= 0, "at least 0 (0 = off)"),
    "cutout": ("--cutout", lambda v: 0 <= v <= 32, "in 0..32 (0 = off)"),
    "ema_decay": ("--ema", lambda v: 0 <= v < 1, "in [0, 1) (0 = off)"),
}


def _check_flags(overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        if key in _FLAG_RULES:
            flag, ok, rule = _FLAG_RULES[key]
            if not ok(value):
                raise RecipeError(f"{flag} must be {rule}, got {value:g}")


def parse_arch(items: list[str]) -> dict[str, Any]:
    """``["channels=16,32,32,64"]`` -> ``{"channels": (16, 32, 32, 64)}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SpecError(f"--arch {item!r}: expected key=value, e.g. --arch channels=32,64,128,256")
        parts = [p for p in value.replace("(", "").replace(")", "").split(",") if p.strip()]
        try:
            nums = tuple(int(p) for p in parts)
        except ValueError:
            raise SpecError(f"--arch {item!r}: values must be integers") from None
        if not nums:
            raise SpecError(f"--arch {item!r}: give at least one integer")
        out[key.strip()] = nums if key.strip() in ("blocks", "channels", "input_size") else nums[0]
    return out


def model_from_options(name: str | None, arch: list[str] | None = None,
                       resume: str | os.PathLike[str] | None = None) -> str | ModelSpec | None:
    """A registered name, or the spec ``--arch`` derives from it (checked by building it once).

    On ``resume``, ``--arch`` derives from the run's own spec (its classes and widths), so the resume
    check compares what was asked with what the run trains, and an equal value passes.
    """
    if not arch:
        return name
    if resume is not None:
        recorded = ModelSpec.from_dict(RunDir(Path(resume)).record()["spec"])
        if name is None or name == recorded.name:
            return recorded.replace(**parse_arch(arch))
    if name is None:
        return None
    return create_model(name, **parse_arch(arch)).spec
