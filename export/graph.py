"""The module every format is converted from, and the shapes it is traced with (shared by the exporters).

``wrapper`` is the ONNX export's own module (``onnx_export.ExportedClassifier``: normalisation inside,
``logits`` and calibrated ``probabilities``), so a change to that head reaches every format at once.
"""

from __future__ import annotations

import torch

from aperture_zoo.model import ResNet

from .onnx_export import ExportedClassifier

# ExecuTorch and Core ML plan memory for the largest batch they take; the bench's 64 and the
# validator's 256 fit, and an app batching more splits its input.
MAX_BATCH = 256


def wrapper(model: ResNet, *, temperature: float | None, tta: bool) -> torch.nn.Module:
    """The module every format is converted from: the one the ONNX export traces."""
    return ExportedClassifier(model, normalize=True, tta=tta,
                              temperature=temperature if temperature is not None else 1.0).eval()


def example_batch(input_size: tuple[int, ...] | list[int], n: int = 2) -> torch.Tensor:
    """Batch 2 at trace time: torch.export specialises sizes 0 and 1, which would pin the batch axis."""
    return torch.rand(n, *input_size)


def batch_dim() -> dict[int, object]:
    return {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}
