"""The module every format is converted from, and the shapes it is traced with (shared by the exporters).

``wrapper`` is the ONNX export's own module (``onnx_export.ExportedClassifier``: normalisation inside,
``logits`` and ``probabilities``: the weights' calibrator in float32 nodes after them), so a change to that head reaches every format at once.
"""

from __future__ import annotations

import torch

from aperture_zoo.calibrators import Calibrator
from aperture_zoo.model import ResNet

from .onnx_export import CalibratedProbabilities, ExportedClassifier

# ExecuTorch and Core ML plan memory for the largest batch they take; the bench's 64 and the
# validator's 256 fit, and an app batching more splits its input.
MAX_BATCH = 256


def wrapper(model: ResNet, *, calibrator: Calibrator | None, tta: bool, sort_free: bool = False) -> torch.nn.Module:
    """The module every format is converted from: the one the ONNX export traces (``calibrator``:
    ``onnx_export.export_calibrator``'s; None: the plain softmax). ``sort_free``: the calibrator's
    margin without ``topk`` (LiteRT's converter turns it into a sort its interpreter does not run)."""
    module = ExportedClassifier(model, normalize=True, tta=tta, calibrator=calibrator).eval()
    if sort_free:
        module.probabilities.__class__ = _SortFreeProbabilities
    return module


class _SortFreeProbabilities(CalibratedProbabilities):
    """The same map; the margin by comparisons: the top logit minus the largest below it, 0 for a tie."""

    @staticmethod
    def margin(z: torch.Tensor) -> torch.Tensor:
        top = z.amax(-1, keepdim=True)
        tied = (z == top).sum(-1, keepdim=True) > 1
        below = torch.where(z < top, z, torch.full_like(z, float("-inf"))).amax(-1, keepdim=True)
        return torch.where(tied, torch.zeros_like(top), top - below)


def example_batch(input_size: tuple[int, ...] | list[int], n: int = 2) -> torch.Tensor:
    """Batch 2 at trace time: torch.export specialises sizes 0 and 1, which would pin the batch axis."""
    return torch.rand(n, *input_size)


def batch_dim() -> dict[int, object]:
    return {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}


class _ThenTail(torch.nn.Module):
    """The quantised network, then the float32 calibrator: ``(logits, probabilities)`` as the ONNX graph."""

    def __init__(self, net: torch.nn.Module, tail: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.tail = net, tail

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, self.tail(logits)


def then_tail(net: torch.nn.Module, tail: torch.nn.Module) -> torch.nn.Module:
    """A quantised network followed by the float32 calibrator (int8 ExecuTorch and LiteRT): their PT2E
    quantisers would otherwise quantise the calibrator's arithmetic too (measured: 0.025 off ExecuTorch's)."""
    return _ThenTail(net, tail)
