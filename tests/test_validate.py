"""Validation tolerances pinned at their edges, and a reference that shares no code with the graph.

The logits are constructed, not trained: 2,000 images, so every rate moves in steps of 0.05
points and a case half a step inside or outside a tolerance is exact, not a float tie.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aperture_zoo.export import onnx_export
from aperture_zoo.export.onnx_export import to_onnx
from aperture_zoo.export.validate import Comparison, _judge, compare, tolerance_for, validate
from aperture_zoo.model import create_model

N = 2000
TORCH_WRONG = 200  # PyTorch misses the first 200 images; it gets the rest right


def _case(*, both_wrong: int = 0, lost: int = 0, shift: float = 0.0, margin: float = 1.0) -> Comparison:
    """A file whose top-1 differs from PyTorch's on ``both_wrong`` images PyTorch already misses
    (agreement falls, accuracy does not) and on ``lost`` images PyTorch gets right (agreement and
    accuracy fall), with every logit off by ``shift``; the winning logit leads by ``margin``.
    """
    labels = np.arange(N) % 10
    t_pred = labels.copy()
    t_pred[:TORCH_WRONG] = (labels[:TORCH_WRONG] + 1) % 10
    o_pred = t_pred.copy()
    o_pred[:both_wrong] = (labels[:both_wrong] + 2) % 10
    o_pred[TORCH_WRONG : TORCH_WRONG + lost] = (labels[TORCH_WRONG : TORCH_WRONG + lost] + 1) % 10
    eye = np.eye(10, dtype=np.float32)
    torch_logits = margin * eye[t_pred]
    onnx_logits = margin * eye[o_pred] + np.float32(shift)
    return compare(onnx_logits, torch_logits, "constructed", labels)


def _fails(precision: str, device: str = "cpu", **case) -> bool:
    failures = _judge(_case(**case), tolerance_for(precision, device), precision)
    return bool(failures)


def test_int8_agreement_must_be_at_least_99_percent() -> None:
    assert _fails("int8", both_wrong=21)       # 98.95 % agreement, no accuracy lost
    assert not _fails("int8", both_wrong=19)   # 99.05 %


def test_int8_top1_drop_must_be_at_most_half_a_point() -> None:
    assert _fails("int8", lost=11)             # 0.55 points lost (agreement 99.45 %)
    assert not _fails("int8", lost=9)          # 0.45 points
    assert not _fails("int8", both_wrong=10, lost=9)  # both inside at once


def test_int8_is_judged_on_images_not_on_logits() -> None:
    assert not _fails("int8", shift=3.0)       # calibrated ranges move logits; only decisions count


def test_fp16_logits_within_5e_2_and_agreement_at_least_99_5_percent() -> None:
    assert _fails("fp16", shift=0.051)
    assert not _fails("fp16", shift=0.049)
    assert _fails("fp16", both_wrong=11, margin=0.01)      # 99.45 %; logits within 0.01
    assert not _fails("fp16", both_wrong=9, margin=0.01)   # 99.55 %


def test_fp32_on_cpu_logits_within_1e_4_and_every_decision_equal() -> None:
    assert _fails("fp32", shift=1.1e-4)
    assert not _fails("fp32", shift=0.9e-4)
    assert _fails("fp32", both_wrong=1, margin=4e-5)      # one flip in 2,000, logits within 8e-5


def test_fp32_on_cuda_logits_within_1e_3() -> None:
    assert _fails("fp32", "cuda", shift=1.1e-3)
    assert not _fails("fp32", "cuda", shift=0.9e-3)
    assert not _fails("fp32", "cuda", both_wrong=100, margin=4e-4)  # near-ties may flip on TF32 hardware


# ----------------------------------------------------- a reference independent of the export wrapper


@pytest.fixture(scope="module")
def small() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet10", channels=(8, 16, 16, 32)).eval()


def test_exported_graph_equals_normalise_then_bare_network(small: torch.nn.Module, tmp_path: Path) -> None:
    """The file against ``net((x - mean) / std)`` written out here, with CIFAR-10's own statistics."""
    from aperture_zoo.export.runtime import create_session

    path = to_onnx(small, tmp_path / "small.onnx", exporter="legacy")
    pixels = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32)
    mean = np.array([0.4914, 0.4822, 0.4465], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.2470, 0.2435, 0.2616], np.float32).reshape(1, 3, 1, 1)
    assert np.allclose(small.spec.mean, mean.ravel(), atol=5e-4) and np.allclose(small.spec.std, std.ravel(), atol=5e-4)
    spec_mean = np.asarray(small.spec.mean, np.float32).reshape(1, 3, 1, 1)
    spec_std = np.asarray(small.spec.std, np.float32).reshape(1, 3, 1, 1)
    with torch.no_grad():
        want = small(torch.from_numpy((pixels - spec_mean) / spec_std)).numpy()
    got = create_session(path, "cpu").run(None, {"pixel_values": pixels})[0]
    assert np.abs(got - want).max() <= 1e-4
    assert np.ptp(want, axis=0).max() > 1e-2  # the logits depend on the input far beyond the bound


def test_validation_fails_a_file_whose_graph_normalises_wrongly(small: torch.nn.Module, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """validate() must not compare the file with the same wrapper that built it: here the wrapper
    divides by a std 1 % too large, in the file and everywhere else it is used."""
    good = to_onnx(small, tmp_path / "good.onnx", exporter="legacy")
    assert validate(good, small, provider="cpu", batch_sizes=(4,)).passed
    monkeypatch.setattr(onnx_export.NormalizedClassifier, "forward",
                        lambda self, x: self.model((x - self.mean) / (self.std * 1.01)))
    wrong = to_onnx(small, tmp_path / "wrong.onnx", exporter="legacy")
    assert not validate(wrong, small, provider="cpu", batch_sizes=(4,)).passed


def test_an_int8_file_is_not_judged_without_test_images(small: torch.nn.Module, tmp_path: Path) -> None:
    """Its ranges are calibrated on images: uniform noise alone can neither pass nor fail it."""
    import onnx

    from aperture_zoo.export import ExportError
    from aperture_zoo.export.onnx_export import save_checked, set_metadata

    proto = onnx.load(str(to_onnx(small, tmp_path / "small.onnx", exporter="legacy")))
    set_metadata(proto, {"precision": "int8"})
    path = save_checked(proto, tmp_path / "small.int8.onnx")
    with pytest.raises(ExportError, match="--data-dir"):
        validate(path, small, provider="cpu", batch_sizes=(4,))
