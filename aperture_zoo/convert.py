"""A PyTorch pickle checkpoint you trust, as checked safetensors (``aperture convert``): the one place a
pickle is opened, with ``torch.load(weights_only=True)``; every loader of weights reads safetensors only."""

from __future__ import annotations

import hashlib
import io
import os
import shlex
from pathlib import Path
from typing import Any

import torch

from .model import create_model
from .registry import CIFAR10_MEAN, CIFAR10_STD
from .weights import WeightsError, describe_mismatch, looks_safetensors, save_weights


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
    fine-tune's head or a derived shape; ``mean``/``std``/``class_names`` the data it was trained on, which
    a pickle does not hold (``assumed_normalisation`` says when CIFAR-10's are taken for another head).
    The file records the checkpoint's SHA-256, so the weights can be traced to the bytes they came from.
    """
    src, dst = Path(src), Path(dst)
    if ("mean" in overrides) != ("std" in overrides):  # one without the other normalises with half a guess
        given, missing = ("mean", "std") if "mean" in overrides else ("std", "mean")
        raise WeightsError(f"{given} given without {missing}; give both, as the model's training normalised its images "
                           "(e.g. --mean 0.5,0.5,0.5 --std 0.25,0.25,0.25; in Python mean=..., std=...)")
    if dst.exists():
        raise WeightsError(f"{str(dst)!r} already exists; choose another output path or remove it first")
    if not src.exists():
        raise WeightsError(f"checkpoint {str(src)!r} does not exist; check the path")
    if not src.is_file():  # reading a FIFO or a device would block forever or never end
        raise WeightsError(f"checkpoint {str(src)!r} is not a regular file (a folder, pipe, socket or device); "
                           "pass the .pth/.pt file")
    data = src.read_bytes()  # hashed and unpickled from the same bytes, not read twice
    try:  # a file object: torch.load would treat a *.safetensors *path* by its suffix
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a refused or broken pickle
        if looks_safetensors(data[:9], len(data)):
            raise WeightsError(f"{str(src)!r} is already a safetensors file, not a pickle checkpoint: use it directly "
                               f"(aperture predict IMAGE --model {shlex.quote(str(src))}; aperture_zoo.load(PATH))") from None
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
    # dataset None: a pickle records no data, so the file never claims CIFAR-10 (which a 10-class head would get)
    return save_weights(model, dst, {"converted_from": src.name, "dataset": None,
                                     "converted_from_sha256": hashlib.sha256(data).hexdigest()})


def data_overrides(mean: str | None = None, std: str | None = None, class_names: str | None = None) -> dict[str, Any]:
    """``--mean 0.5,0.5,0.5 --std ... --class-names cat,dog`` as spec fields (checked by ``convert_checkpoint`` and
    the spec when built, so that the API and the command line refuse alike)."""
    out: dict[str, Any] = {}
    for key, text in (("mean", mean), ("std", std)):
        if text is not None:
            try:
                out[key] = tuple(float(p) for p in text.split(","))
            except ValueError:
                raise WeightsError(f"--{key} {text!r}: expected numbers separated by commas, e.g. --{key} 0.5,0.5,0.5") from None
    if class_names is not None:
        out["class_names"] = tuple(n.strip() for n in class_names.split(","))
    return out


def assumed_normalisation(name: str, **overrides: Any) -> str | None:
    """A note when CIFAR-10's mean/std are written for a head that is not CIFAR-10's: the pickle holds no
    normalisation, and a model trained on other images answers wrongly with CIFAR-10's (None: no note)."""
    head = overrides.get("num_classes", 10)
    if head == 10 and overrides.get("class_names") is None or "mean" in overrides or "std" in overrides:
        return None
    mean = ",".join(f"{v:g}" for v in CIFAR10_MEAN)
    std = ",".join(f"{v:g}" for v in CIFAR10_STD)
    return (f"the checkpoint holds no normalisation, so CIFAR-10's (mean {mean}, std {std}) was recorded for this "
            f"{head}-class {name}; if it was trained on other images, convert again with --mean and --std "
            "(the values its training used)")
