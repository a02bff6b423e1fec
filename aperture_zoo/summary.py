"""Facts about each model for `aperture list` / `aperture info` and the model cards.

Parameter counts and FLOPs are measured on a built model, never copied from the registry.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from .registry import ModelSpec, get_spec, list_models


@lru_cache(maxsize=None)
def parameter_count(name: str) -> int:
    """Trainable parameters of the built model (cheap: no forward pass, unlike ``measure``)."""
    from .model import count_parameters, create_model

    return count_parameters(create_model(name))


@lru_cache(maxsize=None)
def measure(name: str | ModelSpec) -> dict[str, int]:
    """Parameters and forward FLOPs for one 32x32 image (torch's flop counter; 1 MAC = 2 FLOPs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .model import count_parameters, create_model

    model = create_model(name).eval()
    x = torch.zeros(1, *model.spec.input_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return {"params": count_parameters(model), "flops": int(counter.get_total_flops())}


def local_weights(name: str) -> Any:
    """The weights ``load(name, pretrained=True)`` would use from this disk, read once (a ``pretrained.Loaded``;
    None if none)."""
    from .pretrained import NoPretrainedWeightsError, fetch_weights
    from .weights import WeightsError

    try:
        return fetch_weights(name, download=False)
    except (NoPretrainedWeightsError, WeightsError):
        return None


def zoo_rows(pattern: str = "*", with_flops: bool = False) -> list[dict[str, Any]]:
    """One row per registered model: architecture, measured size, report and own accuracy."""
    from .catalog import find_weights

    rows = []
    for name in list_models(pattern):
        spec = get_spec(name)
        # FLOPs need a counted forward pass (seconds on first use); the table does without them.
        facts = measure(name) if with_flops else {"params": parameter_count(name)}
        record = find_weights(name)
        row: dict[str, Any] = {
            "name": name,
            "depth": spec.depth,
            "blocks": list(spec.blocks),
            "channels": list(spec.channels),
            "params": facts["params"],
            "report_params": spec.report_params,
            "params_match_report": facts["params"] == spec.report_params,
            "report_top1_20ep": spec.report_top1_20ep,
            "top1": record.top1 if record else None,  # the published record's final-epoch figure
            "top1_tta": record.top1_tta if record else None,  # with flip test-time augmentation
            "ece_calibrated": record.ece_calibrated if record else None,  # %, with the calibrator (cross-fitted)
            "ece_temperature": record.ece_temperature if record else None,  # %, with one temperature (cross-fitted)
            "ece_tta_calibrated": record.ece_tta_calibrated if record else None,  # %, flip TTA, its calibrator
            "calibrator": record.calibrator.kind if record and record.calibrator else None,
            "temperature": record.temperature if record else None,
            "measured_images": record.measured_images if record else None,  # what the three figures rest on
            "weights": record.tag if record else None,
        }
        if with_flops:
            row["flops"] = facts["flops"]
        rows.append(row)
    return rows


def model_info(name: str, loaded: Any = None) -> dict[str, Any]:
    """Everything `aperture info` shows: spec, measured size and FLOPs, weights metadata.

    ``loaded`` (a ``pretrained.Loaded``: weights given as a path, ``local-dir:``, ``hf-hub:`` or a tag), else
    the weights ``load(name, pretrained=True)`` would use from this disk, is described with its own spec (head,
    classes, mean/std: a file in $APERTURE_WEIGHTS_DIR may be a 2-class run); without weights, the registry's
    spec of ``name``.
    """
    from .catalog import find_weights
    from .pretrained import file_spec, unpublished_note
    from .weights import decode_metadata

    loaded = loaded if loaded is not None else local_weights(name)
    if loaded is not None:
        spec = file_spec(loaded)
        record = find_weights(spec.name)
        weights: dict[str, Any] | None = {"path": str(loaded.path), **decode_metadata(loaded.metadata)}
        published = record is not None and loaded.sha256 == record.sha256
    else:
        spec, weights, published = get_spec(name), None, False
    facts = measure(spec)
    return {
        "name": spec.name,
        "spec": json.loads(spec.to_json()),
        "depth": spec.depth,
        "params": facts["params"],
        "report_params": spec.report_params,
        "flops_per_image": facts["flops"],
        "macs_per_image": facts["flops"] // 2,
        "weights": weights,
        "weights_published": published,
        "weights_note": None if loaded is None else unpublished_note(loaded),
    }
