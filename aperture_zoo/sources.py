"""What a model argument names, and what a weights source says about its model.

A model argument is a registry name or a published tag, or a source of weights: ``hf-hub:ORG/NAME[@rev]``,
``local-dir:DIR``, or a path to a ``model.safetensors`` (or its folder). ``pretrained`` resolves and reads
sources; this module only tells them apart, finds the file in a folder, and reads a ``config.json``
(anyone's text: type-checked by ``ModelSpec``) into a spec.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from .catalog import list_pretrained
from .files import WEIGHTS_FILENAME, user_path
from .registry import ModelSpec, get_spec, list_models
from .weights import WeightsError

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"


class NoPretrainedWeightsError(WeightsError):
    """No published or local weights could be found for a model."""


SourceKind = Literal["hub", "dir", "path", "name"]


def source_kind(ref: str | os.PathLike[str]) -> SourceKind:
    """What a model argument names: a Hub repo, a folder, a weights file, or a registry name / weights tag.

    Registry names and published tags win; anything else with a path separator, a ``.safetensors``
    suffix or that exists on disk is a path. The rest is a name (unknown ones fail with suggestions).
    """
    text = str(ref)
    if text.startswith(HF_HUB_PREFIX):
        return "hub"
    if text.startswith(LOCAL_DIR_PREFIX):
        return "dir"
    if text in list_models() or text in list_pretrained():
        return "name"
    try:
        path = user_path(text)
        on_disk, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError):  # a name too long for a path, or with a NUL byte: not a file here
        on_disk = is_dir = False
    if "/" in text or os.sep in text or text.endswith(".safetensors") or on_disk:
        return "dir" if is_dir else "path"
    return "name"


def is_source(ref: str | os.PathLike[str]) -> bool:
    """A weights source (``hf-hub:``, ``local-dir:``, a path) rather than a registry name or tag."""
    return source_kind(ref) != "name"


def in_local_dir(directory: Path, name: str | None) -> Path | None:
    """``DIR/model.safetensors`` (a run, a card, a Hub folder), else ``DIR/<name>/...`` or ``DIR/<name>.safetensors``."""
    names = [] if name is None else [directory / name / WEIGHTS_FILENAME, directory / f"{name}.safetensors"]
    for candidate in (directory / WEIGHTS_FILENAME, *names):
        if candidate.is_file():
            return candidate
    return None


def from_local_dir(ref: str, name: str | None) -> Path:
    """The weights file of ``local-dir:DIR`` (or a folder path); an error listing where it looked."""
    directory = user_path(ref.removeprefix(LOCAL_DIR_PREFIX))
    found = in_local_dir(directory, name)
    if found is None:
        expected = (f"{directory / WEIGHTS_FILENAME}" if name is None else
                    f"{directory / WEIGHTS_FILENAME}, {directory / name / WEIGHTS_FILENAME} or "
                    f"{directory / (name + '.safetensors')}")
        raise NoPretrainedWeightsError(f"{ref!r} holds no weights{'' if name is None else ' for ' + name}: "
                                       f"expected {expected}")
    return found


def spec_from_config(config: object, where: str) -> ModelSpec:
    """The spec a ``config.json`` describes: architecture, model args, class names and mean/std."""
    from .labels import data_fields_from_metadata

    arch = config.get("architecture") if isinstance(config, dict) else None
    args = (config.get("model_args") if isinstance(config, dict) else None) or {}
    if not arch or not isinstance(arch, str) or not isinstance(args, dict):
        raise WeightsError(f"config.json of {where} names no 'architecture' (or its 'model_args' are not an "
                           "object); it is not an aperture_zoo repo")
    spec = get_spec(arch)
    ours = spec.arch_dict()
    spec = spec.replace(**{k: v for k, v in args.items() if k in ours and k != "name" and ours[k] != v})
    pre = config.get("pretrained_cfg") if isinstance(config.get("pretrained_cfg"), dict) else {}
    recorded = {"label_names": config.get("label_names"), "mean": pre.get("mean"), "std": pre.get("std")}
    return spec.replace(**data_fields_from_metadata({k: json.dumps(v) for k, v in recorded.items()}, spec.num_classes))
