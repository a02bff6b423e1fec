"""Class names and normalisation as they travel with a weights file (and its ONNX export).

A model trained on someone's folder must come back with that folder's class names and the mean/std
it was trained with, wherever it is loaded: the safetensors metadata carries them
(``label_names``, ``mean``, ``std``), and this module turns them back into spec fields. Torch-free.
"""

from __future__ import annotations

import json
from typing import Any

from .registry import CIFAR10_CLASSES


def _floats(text: str | None) -> tuple[float, ...] | None:
    try:
        values = json.loads(text) if text is not None else None
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(values, list) or len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
        return None
    if not all(v == v and abs(v) < 1e6 for v in values):
        return None
    return tuple(float(v) for v in values)


def class_names_from_metadata(meta: dict[str, str], num_classes: int) -> tuple[str, ...] | None:
    """The file's own class names, or None when it has none that fit (or they are CIFAR-10's defaults)."""
    try:
        names = json.loads(meta["label_names"]) if "label_names" in meta else None
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(names, list) or len(names) != num_classes or not all(isinstance(n, str) for n in names):
        return None
    names_t = tuple(names)
    default = CIFAR10_CLASSES if num_classes == 10 else tuple(f"class_{i}" for i in range(num_classes))
    return None if names_t == default else names_t


def data_fields_from_metadata(meta: dict[str, str], num_classes: int) -> dict[str, Any]:
    """Spec fields (``class_names``, ``mean``, ``std``) that a file's metadata records."""
    out: dict[str, Any] = {}
    names = class_names_from_metadata(meta, num_classes)
    if names is not None:
        out["class_names"] = names
    mean, std = _floats(meta.get("mean")), _floats(meta.get("std"))
    if mean is not None and std is not None and all(v > 0 for v in std):
        out["mean"], out["std"] = mean, std
    return out
