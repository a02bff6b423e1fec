"""Resume checkpoints: one safetensors file, tensors plus a JSON header; nothing is unpickled.

Model, EMA and optimizer tensors are stored as named tensors; everything else (epoch, step,
optimizer hyper-parameters, running sums, recipe, wall time) is JSON in the file's metadata. A
single file written through ``atomic_path`` (a fsynced temporary sibling ``<name>.tmp<pid>``,
renamed into place) means a ``kill -9`` at any moment leaves either the previous checkpoint or the
new one, never a torn pair; the trainer removes a stale temporary file when it resumes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from aperture_zoo.errors import ApertureError
from aperture_zoo.files import atomic_path

FORMAT = "aperture_zoo.checkpoint/1"


class CheckpointError(ApertureError, ValueError):
    """A checkpoint that is missing, corrupt, or belongs to a different run."""


class OtherRun(CheckpointError):
    """A run folder asked to continue (or to count as) a run it is not: ``what`` names the difference alone
    ("--subset 10 (asked no --subset)"), so a caller other than ``--resume`` can word its own fix."""

    def __init__(self, message: str, what: str) -> None:
        super().__init__(message)
        self.what = what


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            elif value is not None:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, entry in info["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(
    path: str | os.PathLike[str],
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    info: dict[str, Any],
    ema_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Atomically write model/optimizer/EMA tensors and the JSON ``info`` to ``path``."""
    from aperture_zoo.weights import write_safetensors

    path = Path(path)
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    if ema_state is not None:
        tensors.update({f"ema.{k}": v for k, v in ema_state.items()})
    opt_tensors, opt_info = _split_optimizer(optimizer_state)
    tensors.update(opt_tensors)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = {"format": FORMAT, "info": json.dumps(info), "optimizer": json.dumps(opt_info)}
    with atomic_path(path) as tmp:
        write_safetensors(tensors, tmp, header)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"model", "ema" (or None), "optimizer", "info"}`` from a checkpoint file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {str(path)!r}; --resume takes a run directory written by "
            "`aperture train` (it holds checkpoint.safetensors)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable ({exc}); start a new run") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an aperture_zoo training checkpoint")
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")} or None
    optimizer = _join_optimizer(tensors, json.loads(meta["optimizer"]))
    return {"model": model, "ema": ema, "optimizer": optimizer, "info": json.loads(meta["info"])}
