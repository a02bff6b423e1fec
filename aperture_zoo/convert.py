"""A PyTorch pickle checkpoint you trust, as checked safetensors (``aperture convert``): the one place a
pickle is opened, with ``torch.load(weights_only=True)``; every loader of weights reads safetensors only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .model import create_model
from .weights import WeightsError, describe_mismatch, save_weights


def _unpickler_reason(exc: BaseException) -> str:
    """The one informative sentence of torch's multi-paragraph weights-only refusal (never cut mid-sentence)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it needs the class {found.group(1)}, which a weights-only load refuses"
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n|$)", text)
    if found and found.group(1).strip():
        return f"not a readable pickle: {found.group(1).strip().rstrip('.')}"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if len(first) > 160:
        first = first[:160].rsplit(" ", 1)[0] + " …"
    return first.rstrip(".")


def convert_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str], name: str,
                       **overrides: Any) -> Path:
    """A PyTorch pickle checkpoint of ``name`` as a checked safetensors file.

    Only for files you trust: it unpickles with ``torch.load(weights_only=True)``, which refuses
    anything but tensors and plain containers (a pickled whole model, like a ``DataParallel``
    object, is refused: save its ``state_dict()`` first). Nested ``state_dict``/``model`` entries
    and DataParallel's ``module.`` prefixes are unwrapped; keys and shapes are checked strictly.
    ``overrides`` (``num_classes``, ``channels``, ``blocks``, as ``create_model`` takes them) describe a
    fine-tune's head or a derived shape.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise WeightsError(f"{str(dst)!r} already exists; choose another output path or remove it first")
    if not src.is_file():
        raise WeightsError(f"checkpoint {str(src)!r} does not exist; check the path")
    try:
        with src.open("rb") as f:  # a file object: torch.load would treat a *.safetensors *path* by its suffix
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a refused or broken pickle
        raise WeightsError(
            f"{str(src)!r} cannot be read as a weights-only checkpoint ({_unpickler_reason(exc)}); if it pickles "
            "a whole model, load it where you trust it and torch.save(model.state_dict(), PATH) first"
        ) from None
    for key in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{str(src)!r} holds no state dict of tensors; save one with torch.save(model.state_dict(), PATH)")
    tensors = {k.removeprefix("module."): v for k, v in obj.items()}
    model = create_model(name, **overrides)
    problems = describe_mismatch(model, tensors)
    if problems:
        fc = tensors.get("fc.weight")
        hint = (f"; a fine-tune for {fc.shape[0]} classes? add --num-classes {fc.shape[0]}"
                if fc is not None and fc.ndim == 2 and fc.shape[0] != model.spec.num_classes else "")
        text = "; ".join(problems)
        if "the tensors fit" not in text:  # no published shape fits them: a fine-tune's head or a derived shape
            text += hint + "; a derived shape takes --arch as `aperture train` does (e.g. --arch channels=32,64,128,256)"
        raise WeightsError(f"{str(src)!r} does not match {name}: {text}")
    model.load_state_dict(tensors)
    return save_weights(model, dst, {"converted_from": src.name})
