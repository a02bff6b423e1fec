"""ONNX export, validation and torch-free inference (installed as ``aperture_zoo.export``).

>>> from aperture_zoo.export import to_onnx, validate
>>> to_onnx(model, "resnet22.onnx")                       # checked, self-describing, dynamic batch
>>> validate("resnet22.onnx", model, data_dir="~/data").passed

Nothing heavy is imported here: ``from aperture_zoo.export.predict import OnnxClassifier`` (or
``aperture_zoo.export.OnnxClassifier``) runs with onnxruntime, numpy and pillow only — no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aperture_zoo._lazy import lazy_exports

from .errors import ExportError, ImageError, OnnxFileError

_LAZY = {
    "to_onnx": "onnx_export",
    "NormalizedClassifier": "onnx_export",
    "read_metadata": "onnx_export",
    "check_model_file": "onnx_export",
    "to_fp16": "quantize",
    "to_int8": "quantize",
    "calibration_pixels": "quantize",
    "validate": "validate",
    "ValidationReport": "validate",
    "tolerance_for": "validate",
    "export_model": "pipeline",
    "ExportResult": "pipeline",
    "OnnxClassifier": "predict",
    "Prediction": "predict",
    "load_image": "predict",
    "create_session": "runtime",
    "run_benchmark": "bench",
}

__all__ = ["ExportError", "ImageError", "OnnxFileError", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from .bench import run_benchmark
    from .onnx_export import NormalizedClassifier, check_model_file, read_metadata, to_onnx
    from .pipeline import ExportResult, export_model
    from .predict import OnnxClassifier, Prediction, load_image
    from .quantize import calibration_pixels, to_fp16, to_int8
    from .runtime import create_session
    from .validate import ValidationReport, tolerance_for, validate


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY, __all__)
