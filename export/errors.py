"""Errors of the export / inference path (torch-free, so the predict path can raise them)."""

from __future__ import annotations

from aperture_zoo.errors import ApertureError
from aperture_zoo.images import ImageError


class ExportError(ApertureError, RuntimeError):
    """Export, conversion or validation could not be done as asked (e.g. CUDA requested, absent)."""


class OnnxFileError(ApertureError, ValueError):
    """A path that is not a usable ONNX classifier (missing, not ONNX, wrong inputs)."""


__all__ = ["ExportError", "ImageError", "OnnxFileError"]  # ImageError lives with the image rule
