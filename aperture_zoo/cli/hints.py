"""The commands the CLI suggests after a training error: typed as printed, they continue or retry the run.

The library's errors carry the run folder, its recipe and its recorded options (``run.json``); the
command lines are built here, where the command-line flags live.
"""

from __future__ import annotations

import os
import shlex
from typing import Any


def resume_command(run_dir: str | os.PathLike[str]) -> str:
    """The command that continues a checkpointed run: everything else comes from its run.json."""
    return f"aperture train --resume {shlex.quote(str(run_dir))}"


def retry_command(recipe: Any, record: dict[str, Any], out: str | os.PathLike[str] | None = None,
                  **changes: Any) -> str:
    """The ``aperture train`` command line that starts a run again, with recipe ``changes``.

    ``record`` is what the run's ``run.json`` holds (model, seed, data options, data folder,
    download, device, compile). The command names every option the run takes, so it reproduces the
    run wherever it is typed (the CIFAR data folder only for a CIFAR run: ``train`` refuses it for an
    image folder); without ``out`` the new run gets a fresh folder.
    """
    from aperture_zoo.datasets import is_builtin
    from aperture_zoo.registry import ModelSpec

    spec = ModelSpec.from_dict(record["spec"])
    args = ["aperture", "train", spec.name, *_arch_args(spec), *_recipe_args(recipe, changes)]
    args += ["--seed", str(record["seed"])]
    for key, flag in (("subset", "--subset"), ("test_subset", "--test-subset"), ("val_split", "--val-split")):
        if record.get(key) or (key == "val_split" and record.get("val_rule") and record.get(key) == 0):
            args += [flag, str(record[key])]  # a folder run without a validation split says so (its default is 0.1)
    args += _dataset_args(record)
    if is_builtin(record.get("dataset")):  # the rule by which train refuses --data-dir for a folder run
        args += ["--data-dir", str(record["data_dir"])]
    if record.get("download") is False:
        args.append("--no-download")
    if record.get("device") not in (None, "auto"):
        args += ["--device", str(record["device"])]
    if record.get("compile"):
        args.append("--compile")
    if out is not None:
        args += ["--out", str(out)]
    return " ".join(shlex.quote(a) for a in args)


def _dataset_args(record: dict[str, Any]) -> list[str]:
    """``--dataset``, ``--test-split``, ``--init`` and ``--freeze-backbone`` as the run was started."""
    args: list[str] = []
    if record.get("dataset", "cifar10") != "cifar10":
        args += ["--dataset", str(record["dataset"])]
    if record.get("test_split") is not None and record.get("dataset") not in ("cifar10", "cifar100", None):
        args += ["--test-split", str(record["test_split"])]
    if record.get("init"):
        args += ["--init", str(record["init"]["ref"])]
    if record.get("freeze_backbone"):
        args.append("--freeze-backbone")
    return args


def _arch_args(spec: Any) -> list[str]:
    """``--arch`` for every field where ``spec`` differs from the registered model of its name."""
    from aperture_zoo.errors import ApertureError
    from aperture_zoo.registry import get_spec

    try:
        base_arch = get_spec(spec.name).arch_dict()
    except ApertureError:  # a spec registered by a script: the command cannot name it
        base_arch = spec.arch_dict()
    args = []
    for key, value in spec.arch_dict().items():
        if key != "name" and value != base_arch[key]:
            text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
            args += ["--arch", f"{key}={text}"]
    return args


def _recipe_args(recipe: Any, changes: dict[str, Any]) -> list[str]:
    """``--recipe`` and the ``--set``/``--lr`` that turn the named recipe into ``recipe`` with ``changes``."""
    from aperture_zoo.train.recipes import FAST, RECIPES

    wanted = recipe.replace(**changes) if changes else recipe
    base = RECIPES.get(recipe.name, FAST)
    args = ["--recipe", base.name]
    scaled = wanted.reference_lr is not None and (wanted.reference_lr, wanted.reference_batch_size) == (
        base.reference_lr, base.reference_batch_size)  # its lr follows from --set batch_size
    for key in base.differences(wanted):
        if key == "name" or key in changes or (key == "lr" and scaled):
            continue
        value = getattr(wanted, key)
        args += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    for key in changes:
        value = getattr(wanted, key)
        args += ["--lr", f"{value:g}"] if key == "lr" else ["--set", f"{key}={value}"]
    return args


def train_hint(exc: Exception) -> str | None:
    """What to type next after a training error, to append to its message; None when there is nothing."""
    from aperture_zoo.train.settings import NothingToResume, TrainingDiverged, TrainingInterrupted

    if isinstance(exc, TrainingInterrupted):
        return f". Continue with: {resume_command(exc.run_dir)}"
    if isinstance(exc, TrainingDiverged):
        retry = retry_command(exc.recipe, exc.record, lr=exc.recipe.lr / 2)
        if exc.checkpointed:
            return (f". Resume from the last good checkpoint with half the lr: `{resume_command(exc.run_dir)} --lr "
                    f"{exc.recipe.lr / 2:g}`, or start again with it: `{retry}` (or add warm-up, --set "
                    "warmup_fraction=0.1, or --set precision=fp32 to that command)")
        return (f". Lower --lr: start again with half of it, `{retry}` (or add warm-up, --set "
                "warmup_fraction=0.1, or --set precision=fp32 to that command)")
    if isinstance(exc, NothingToResume):
        return f": `{retry_command(exc.recipe, exc.record, out=exc.run_dir)}`"
    return None
