"""Accuracy on corrupted test images (``aperture eval --corruptions``), CIFAR-10-C style.

The corrupted copies are generated on the fly by ``aperture_zoo.corruptions`` (no 2.5 GB download),
from a stratified sample of the split when ``max_images`` is smaller than it, since 25 corrupted
copies of the full test set cost 25 evaluations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from aperture_zoo.corruptions import parse_corruptions, summarise
from aperture_zoo.data import Split, subset


def evaluate_corruptions(
    model: nn.Module,
    split: Split,
    corruptions: str | list[tuple[str, int]],
    *,
    max_images: int | None = None,
    batch_size: int = 1000,
    device: Any = None,
    tta: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Top-1 (%) per corruption and severity, their mean and the worst corruption.

    ``corruptions``: ``"all"``, ``"contrast,jpeg_compression:5"`` or a parsed list. Bad names and
    severities fail before any image is touched.
    """
    from aperture_zoo.corruptions import corrupt

    from .evaluate import evaluate

    chosen = parse_corruptions(corruptions) if isinstance(corruptions, str) else list(corruptions)
    sample = subset(split, max_images if max_images is not None and max_images < len(split) else None, 0)
    accuracy: dict[str, dict[int, float]] = {}
    for name, severity in chosen:
        if on_step is not None:
            on_step(f"{name} severity {severity}")
        images = corrupt(sample.images, name, severity)
        result = evaluate(model, Split(images, sample.labels, sample.classes), batch_size=batch_size,
                          device=device, tta=tta, calibration=False)
        accuracy.setdefault(name, {})[severity] = result.top1
    return {"num_images": len(sample), "stratified_sample": len(sample) < len(split), "tta": tta,
            "source": "Hendrycks & Dietterich 2019 (CIFAR-10-C) parameters, generated on the fly",
            "top1": {n: {str(s): v for s, v in by.items()} for n, by in accuracy.items()},
            **summarise(accuracy)}
