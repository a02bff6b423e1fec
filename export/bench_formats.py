"""The other formats' rows of ``aperture bench``: each file timed in its own runtime, beside onnxruntime.

A variant is ``<runtime>-<precision>``: ``ov-fp32``, ``ov-bf16``, ``ov-int8`` (OpenVINO IR; bf16 is the
file's inference hint), ``ov-onnx-int8`` (OpenVINO running the onnxruntime int8 ONNX file itself),
``et-fp32``, ``et-int8`` (ExecuTorch, XNNPACK), ``litert-fp32``, ``litert-int8``. The files are exported
here, from the same model, into the bench's temporary folder; a runtime that is not installed is a row
with no number and the install command as its note (``formats.require``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .formats import file_name, require

FORMAT_VARIANTS: dict[str, tuple[str, str]] = {  # variant -> (format, precision)
    "ov-fp32": ("openvino", "fp32"), "ov-bf16": ("openvino", "bf16"), "ov-int8": ("openvino", "int8"),
    "ov-onnx-int8": ("onnx", "int8"),
    "et-fp32": ("executorch", "fp32"), "et-int8": ("executorch", "int8"),
    "litert-fp32": ("tflite", "fp32"), "litert-int8": ("tflite", "int8"),
}


def export_bench_files(model, variants: list[str], tmp: Path, calibration: np.ndarray, onnx_files: dict[str, Path],
                       say: Callable[[str], None], batch_sizes: tuple[int, ...] | list[int] = (1,),
                       ) -> tuple[dict[str, Path], dict[str, str]]:
    """The file of each format variant (exported once per format and precision; an ExecuTorch program
    once per batch size, ``variant@batch``, as its batch is fixed) and, per variant, why it has none (a
    missing extra, a failed conversion)."""
    from .format_export import export_file

    files: dict[str, Path] = {}
    failed: dict[str, str] = {}
    for variant in variants:
        fmt, precision = FORMAT_VARIANTS[variant]
        if fmt == "onnx":
            files[variant] = onnx_files["int8"]
            continue
        try:
            require(fmt)
            require(fmt, "run")
            for batch in (batch_sizes if fmt == "executorch" else (1,)):
                say(f"exporting the {fmt} {precision} file" + (f" (batch {batch})" if fmt == "executorch" else ""))
                key = f"{variant}@{batch}" if fmt == "executorch" else variant
                files[key] = export_file(model, fmt, precision, tmp / file_name(f"m{batch}", fmt, precision),
                                         calibration=calibration if precision == "int8" else None,
                                         onnx_fp32=onnx_files.get("fp32"), batch=batch)
        except Exception as exc:  # noqa: BLE001 - a runtime that cannot be had is a row's note
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            failed[variant] = f"{type(exc).__name__}: {first}"
    return files, failed


def format_runner(variant: str, path: Path, pixels: np.ndarray, threads: int | None) -> Callable[[], object]:
    """One timed call: the file's session on ``pixels`` (created, and run once, outside the timing)."""
    from .sessions import open_session

    session = open_session(path, "cpu", threads=threads, runtime="openvino" if variant.startswith("ov-") else None)
    feed = {"pixel_values": np.ascontiguousarray(pixels)}
    session.run(None, feed)  # LiteRT resizes its input to the batch on the first call
    return lambda: session.run(None, feed)
