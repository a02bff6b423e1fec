"""What a validation says: the tolerance each precision must meet, each comparison with PyTorch, and
the report written beside the file (``resnet22.report.json``; ``resnet22.int8.pte.report.json`` for
the other formats: ``files.report_name``).

Kept apart from ``validate`` (which runs the comparisons) so that readers of reports and the spec-level
check of files that do not run here use the same dataclasses without torch. A report records the
SHA-256 of the exact model it judged (``onnx_sha256``, by ``files.model_sha256``, for every format) and
of the weights of the PyTorch reference (``weights_sha256``): ``provenance`` checks both.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aperture_zoo.files import atomic_write_text, report_name

from .errors import ExportError

# bf16 keeps 8 mantissa bits to fp16's 11: the fp16 logit bound scaled by 2**3 (measured: 0.03-0.06 on
# 2,000 test images for the six published models' OpenVINO bf16 files; agreement as fp16's)
BF16_MAX_ABS = 0.4


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None = None        # on logits
    min_agreement: float | None = None  # percent of top-1 predictions equal to PyTorch's
    max_top1_drop: float | None = None  # accuracy points lost against PyTorch on the test set
    random_inputs_gated: bool = True
    calibrator_max_diff: float = 1e-4   # probabilities against Calibrator.apply of the file's own logits


def tolerance_for(precision: str, device: str) -> Tolerance:
    """The tolerances a file of ``precision`` run on ``device`` must meet to be shipped.

    fp32 on CPU matches PyTorch to 1e-4 on logits and on every top-1; fp16 loses at most 0.5 %
    of top-1 agreement; int8 (static, calibrated) keeps 99 % agreement and loses at most 0.5
    points of accuracy on the test set.
    """
    if precision == "fp32":
        return Tolerance(max_abs=1e-4, min_agreement=100.0) if device == "cpu" else Tolerance(max_abs=1e-3)
    if precision == "fp16":
        return Tolerance(max_abs=5e-2, min_agreement=99.5)
    if precision == "bf16":
        return Tolerance(max_abs=BF16_MAX_ABS, min_agreement=99.5)
    if precision == "int8":
        return Tolerance(min_agreement=99.0, max_top1_drop=0.5, random_inputs_gated=False)
    raise ExportError(f"unknown precision {precision!r} in the file's metadata; export it again")


@dataclass
class Comparison:
    """ONNX vs PyTorch on one input set."""

    inputs: str
    num_images: int
    max_abs_diff: float
    mean_abs_diff: float
    agreement: float                  # percent
    onnx_top1: float | None = None    # percent, when labels are known
    torch_top1: float | None = None
    agreement_se: float | None = None  # binomial standard errors, in points
    onnx_top1_se: float | None = None
    top1_drop_se: float | None = None  # of the paired drop (torch top-1 - ONNX top-1)
    max_prob_diff: float | None = None  # the file's probabilities vs the calibrator applied to the PyTorch logits
    max_calibrator_diff: float | None = None  # ... vs the calibrator applied to the file's own logits

    @property
    def top1_drop(self) -> float | None:
        return None if self.onnx_top1 is None or self.torch_top1 is None else self.torch_top1 - self.onnx_top1


@dataclass
class ValidationReport:
    onnx_file: str                        # the file validated (any format; the key name is kept for readers)
    arch: str
    precision: str
    provider: str                       # the provider the session really used
    tolerance: Tolerance
    comparisons: list[Comparison] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    reference_device: str = "cpu"
    test_images_total: int | None = None  # size of the test split the sample was drawn from
    renamed_from: str | None = None       # set when a failed file was moved aside (see export_model)
    ran: bool = True                      # False: checked at the spec level only (Core ML, off Apple systems)
    onnx_sha256: str | None = None        # the exact model judged, any format (files.model_sha256; provenance.check_report)
    weights_sha256: str | None = None     # the weights of the PyTorch reference

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        out = {
            "onnx_file": self.onnx_file, "arch": self.arch, "precision": self.precision,
            "provider": self.provider, "reference_device": self.reference_device,
            "tolerance": asdict(self.tolerance), "passed": self.passed, "failures": self.failures,
            "comparisons": [{**asdict(c), "top1_drop": c.top1_drop} for c in self.comparisons],
            "test_images_total": self.test_images_total,
            "format": _format_name(self.onnx_file), "ran": self.ran,
            "onnx_sha256": self.onnx_sha256, "weights_sha256": self.weights_sha256,
            "standard_errors": "binomial, in percentage points (Agresti-Coull); top1_drop_se is paired",
        }
        if self.renamed_from is not None:
            out["renamed_from"] = self.renamed_from
            out["note"] = "this file failed validation and was renamed so that it is not mistaken for a good one"
        return out

    def write_json(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write beside the file (``report_path``) unless a path is given."""
        path = Path(path) if path else report_path(self.onnx_file)
        return atomic_write_text(path, json.dumps(finite_json(self.to_dict()), indent=2, allow_nan=False) + "\n")


def _format_name(path: str) -> str:
    from .formats import format_of

    try:
        return format_of(path).name
    except ExportError:
        return "onnx"


def finite_json(data: Any) -> Any:
    """``data`` with every NaN or infinity replaced by None: JSON has no NaN, and a reader must not get one."""
    if isinstance(data, float) and not np.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v) for v in data]
    return data


def report_path(onnx_path: str | os.PathLike[str]) -> Path:
    """``resnet22.int8.onnx`` -> ``resnet22.int8.report.json``; other formats keep their suffix in the name
    (``resnet22.int8.pte.report.json``), so the reports of one precision in several formats do not collide."""
    p = Path(onnx_path)
    return p.with_name(report_name(p.name))


