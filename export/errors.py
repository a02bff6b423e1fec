"""Errors of the export / inference path (torch-free, so the predict path can raise them)."""

from __future__ import annotations

from aperture_zoo.errors import ApertureError


class ExportError(ApertureError, RuntimeError):
    """Export, conversion or validation could not be done as asked (e.g. CUDA requested, absent)."""


class OnnxFileError(ApertureError, ValueError):
    """A path that is not a usable ONNX classifier (missing, not ONNX, wrong inputs)."""


class ImageError(ApertureError, ValueError):
    """An image file that is missing or cannot be decoded."""
