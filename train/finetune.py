"""``--init``: start a run from published or earlier weights, with a new head when the classes differ (by name).

The source is anything ``aperture_zoo.load`` takes: a published tag (``resnet22.fast``, SHA-256
pinned), ``hf-hub:ORG/NAME[@rev]``, ``local-dir:DIR``, a run folder or a ``model.safetensors``
(pickles are refused by the weights reader). Its architecture must be the one being trained; its normalisation is kept, because the
backbone's features were learnt on inputs normalised that way. ``--freeze-backbone`` trains the
head only (a linear probe): backbone parameters get no gradient and BatchNorm keeps its statistics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from aperture_zoo.errors import ApertureError
from aperture_zoo.registry import ModelSpec


class InitError(ApertureError, ValueError):
    """An ``--init`` source that cannot start this run; the message says what would."""


@dataclass(frozen=True)
class InitSource:
    ref: str             # as given: a tag or a path
    path: Path           # the weights file
    sha256: str
    spec: ModelSpec      # what the file holds (its classes and normalisation included)

    def record(self) -> dict[str, Any]:
        return {"ref": self.ref, "path": str(self.path), "sha256": self.sha256, "arch": self.spec.name,
                "num_classes": self.spec.num_classes}


def resolve_init(ref: str | os.PathLike[str], spec: ModelSpec) -> InitSource:
    """The weights ``ref`` names, checked to be weights of ``spec``'s architecture."""
    from aperture_zoo.files import file_sha256
    from aperture_zoo.weights import WeightsError, read_metadata, spec_from_metadata

    text = str(ref)
    path = init_file(text, spec.name)
    meta = read_metadata(path)  # refuses pickles and corrupt files with a one-line error
    source = spec_from_metadata(meta)
    if source is None:
        raise WeightsError(f"--init {text!r} has no architecture in its metadata; save it with aperture_zoo "
                           f"(`aperture convert FILE model.safetensors --model {spec.name}`)")
    ours = {k: v for k, v in spec.arch_dict().items() if k not in ("name", "num_classes")}
    theirs = {k: v for k, v in source.arch_dict().items() if k not in ("name", "num_classes")}
    if ours != theirs:
        keys = [k for k in ours if ours.get(k) != theirs.get(k)]
        differ = ", ".join(f"{k} {theirs.get(k)} vs {ours.get(k)}" for k in keys)
        # the same name with another width or depth: the fix is --arch, not the name (the advice was the command just run)
        arch = " ".join(f"--arch {k}=" + ",".join(map(str, v)) if isinstance(v, (list, tuple)) else f"--arch {k}={v}"
                        for k, v in ((k, theirs.get(k)) for k in keys))
        fix = (f"train {source.name} with its shape (`aperture train {source.name} {arch} --init {text}`)"
               if source.name == spec.name else f"train {source.name} from it (`aperture train {source.name} --init {text}`)")
        raise InitError(f"--init {text!r} holds {source.name} weights of another shape ({differ}), which do not fit "
                        f"this {spec.name}; {fix}, or pick {spec.name} weights (e.g. --init {spec.name}.fast)")
    return InitSource(text, path, file_sha256(path), source)


def init_file(text: str, name: str = "resnet22") -> Path:
    """The weights file an ``--init`` source names, found as ``aperture_zoo.load`` finds it.

    A source (``hf-hub:ORG/NAME[@rev]``, ``local-dir:DIR``, a run folder) goes through the one loading
    rule, so a fine-tune starts from what ``predict --model`` of that source would answer with.
    """
    from aperture_zoo.catalog import find_weights
    from aperture_zoo.files import user_path
    from aperture_zoo.pretrained import resolve_weights
    from aperture_zoo.sources import source_kind

    kind = source_kind(text)
    if kind in ("hub", "dir"):
        return resolve_weights(text, download=True)  # pinned where the registry pins it; a folder's file
    path = user_path(text)
    if kind == "path":
        if not path.exists():
            raise InitError(f"--init {text!r}: no such file; pass a model.safetensors, a run folder, hf-hub:ORG/NAME "
                            f"or a published tag such as {name}.fast (see `aperture list`)")
        return path
    find_weights(text)  # an unknown tag fails here, listing the published ones
    return resolve_weights(text, download=True)  # SHA-256 pinned, as load() is


def same_head(source: ModelSpec, target: ModelSpec) -> bool:
    """Whether the source's head answers the target's classes: the same names in the same order, not just as many."""
    return source.num_classes == target.num_classes and tuple(source.label_names) == tuple(target.label_names)


def load_init(model: nn.Module, source: InitSource) -> None:
    """Every tensor of the source that fits; the head starts fresh unless its class names are the run's.

    Ten CIFAR-10 outputs are not ten digits: a head kept for the count alone would start "airplane"
    as "eight". The new head keeps the model's own fresh initialisation.
    """
    from aperture_zoo.weights import load_weights

    keep = same_head(source.spec, model.spec)  # type: ignore[arg-type]
    fresh = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith("fc.")}
    # the run's own spec, and no calibration or data record of the init file: a fine-tune is a new model
    own = {k: getattr(model, k, None) for k in ("spec", "temperature", "calibrator", "calibrator_tta",
                                                "calibration_notice", "weights_metadata")}
    load_weights(model, source.path, strict=keep)  # type: ignore[arg-type]
    for key, value in own.items():
        setattr(model, key, value)
    if own["weights_metadata"] is None:
        del model.weights_metadata
    if not keep:
        model.load_state_dict(fresh, strict=False)


ADAPTING = "_aperture_adapting"  # set on a frozen BatchNorm while the probe re-estimates its statistics


def _frozen_bn(module: nn.Module, inputs: Any) -> None:
    module.train(bool(getattr(module, ADAPTING, False)))


def _keep_statistics(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.register_forward_pre_hook(_frozen_bn)


def freeze_backbone(model: nn.Module) -> None:
    """Train the head (``fc``) only: the rest gets no gradient and BatchNorm keeps its running statistics."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("fc."))
    _keep_statistics(model)


def freeze_stages(model: nn.Module, stages: int) -> None:
    """Fine-tune above the stem and the first ``stages`` stages: those keep their weights and BN statistics.

    Nothing below them learns, so their backward pass is skipped altogether: at 32x32 the stem and
    the first stage cost the most per image, and a short fine-tune's time is mostly backward passes.
    """
    blocks = getattr(model, "stages", None)
    if blocks is None or not 0 <= stages <= len(blocks):
        raise InitError(f"frozen_stages={stages}, but the network has {len(blocks or [])} stages; freeze fewer "
                        "(--set frozen_stages=N)")
    for module in [model.conv1, model.bn1, *blocks[:stages]]:
        for p in module.parameters():
            p.requires_grad_(False)
        _keep_statistics(module)


def init_sha256(ref: str | os.PathLike[str]) -> str | None:
    """The SHA-256 of the weights ``--init`` names: a published tag's pin, else the bytes of the file it finds."""
    from aperture_zoo.catalog import find_weights
    from aperture_zoo.files import file_sha256
    from aperture_zoo.sources import is_source

    try:
        published = None if is_source(str(ref)) else find_weights(str(ref))
        return published.sha256 if published is not None else file_sha256(init_file(str(ref)))
    except (ApertureError, OSError):
        return None
