"""Class names and normalisation as they travel with a weights file (and its ONNX export).

A model trained on someone's folder must come back with that folder's class names and the mean/std
it was trained with, wherever it is loaded: the safetensors metadata carries them
(``label_names``, ``mean``, ``std``), and this module turns them back into spec fields. Torch-free.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import ApertureError
from .registry import CIFAR10_CLASSES


class MetadataError(ApertureError, ValueError):
    """A file records class names or normalisation that cannot be what it was trained with: refused,
    never replaced by CIFAR-10's (a model normalised or labelled wrongly answers wrongly, silently)."""


_FIX = "its metadata is damaged or was edited; save the weights again with save_weights (or fix that field)"


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


def class_names_from_metadata(meta: dict[str, str], num_classes: int, *, own_head: bool = False
                              ) -> tuple[str, ...] | None:
    """The file's own class names, or None when it has none that fit (or they are CIFAR-10's defaults)."""
    if "label_names" not in meta:
        return None
    try:
        names = json.loads(meta["label_names"])
    except (json.JSONDecodeError, TypeError):
        names = None
    # an empty list is a features model's (num_classes=0 has no classes to name), never a head's
    if not isinstance(names, list) or not (names or num_classes == 0) or not all(isinstance(n, str) for n in names):
        raise MetadataError(f"the file records label_names that are not a list of class names; {_FIX}")
    if len(names) != num_classes and own_head:  # the file's own head: names and outputs must agree
        raise MetadataError(f"the file records {len(names)} label_names for its {num_classes}-class head; {_FIX}")
    if len(names) != num_classes:  # another head than the file's (a fine-tune's --init): its names are not these
        return None
    names_t = tuple(names)
    default = CIFAR10_CLASSES if num_classes == 10 else tuple(f"class_{i}" for i in range(num_classes))
    return None if names_t == default else names_t


def data_fields_from_metadata(meta: dict[str, str], num_classes: int, *, own_head: bool = False) -> dict[str, Any]:
    """Spec fields (``class_names``, ``mean``, ``std``) that a file's metadata records (``own_head``: for the
    head the file itself records, whose outputs its names must match)."""
    out: dict[str, Any] = {}
    names = class_names_from_metadata(meta, num_classes, own_head=own_head)
    if names is not None:
        out["class_names"] = names
    mean, std = _recorded(meta, "mean"), _recorded(meta, "std")
    if (mean is None) != (std is None):
        raise MetadataError(f"the file records {'mean' if std is None else 'std'} without the other; {_FIX}")
    if mean is not None and std is not None:
        out["mean"], out["std"] = mean, std
    return out


def _recorded(meta: dict[str, str], key: str) -> tuple[float, ...] | None:
    """A recorded normalisation: absent is None (CIFAR-10's applies), anything else must be usable."""
    if key not in meta:
        return None
    values = _floats(meta[key])
    if values is None or (key == "std" and not all(v > 0 for v in values)):
        above = " above 0" if key == "std" else ""
        raise MetadataError(f"the file records {key} that is not three finite numbers{above}; {_FIX}")
    return values
