"""ONNX -> OpenVINO IR (``.xml`` + ``.bin``): fp32, bf16 (an inference hint) and int8 (NNCF).

OpenVINO converts the checked fp32 ONNX file, so the IR has the ONNX graph's contract exactly (input
``pixel_values`` N x 3 x 32 x 32 in [0, 1], outputs ``logits`` and ``probabilities``). The metadata goes
in the IR's own ``rt_info`` under ``aperture_zoo``. The precision the CPU plugin computes in is written
into the file as well (``rt_info/runtime_options/INFERENCE_PRECISION_HINT``, and the metadata's
``inference_precision_hint``): on CPUs with bf16 units OpenVINO's default is bf16, so an fp32 file says
``f32`` or it would not be fp32; the bf16 file keeps fp32 weights and says ``bf16``. OpenVINO 2026.4's
``compile_model`` does not apply that hint by itself (measured): ``sessions.OpenVinoSession`` passes it,
and an app compiling the IR itself must pass ``{"INFERENCE_PRECISION_HINT": hint}`` too. int8 is NNCF's post-training
quantisation on training images, computed around the int8 parts in f32.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from aperture_zoo.files import atomic_path, file_sha256

from .errors import ExportError

META_SECTION = "aperture_zoo"
BIN_SHA256 = "bin_sha256"  # the metadata key naming the IR's weights file by content
CALIBRATION_BATCH = 32
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def to_openvino(onnx_path: Path, path: Path, precision: str, meta: dict[str, str],
                calibration: np.ndarray | None = None) -> Path:
    """Write ``path`` (an ``.xml``; its ``.bin`` beside it) from the fp32 ONNX file ``onnx_path``."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    if precision == "int8":
        model = _quantize(model, calibration)
    meta = {**meta, "openvino_version": ov.get_version(), "inference_precision_hint": HINTS[precision]}
    for key, value in meta.items():
        model.set_rt_info(value, [META_SECTION, key])
    model.set_rt_info(HINTS[precision], ["runtime_options", "INFERENCE_PRECISION_HINT"])
    _save(model, Path(path))
    # the graph names its weights file by content (``bin_sha256``): an IR whose .bin came from another
    # export is refused when it is opened (``sessions``). rt_info lives in the .xml, so saving again
    # leaves the .bin's bytes as they were; that is checked, not assumed.
    weights = file_sha256(Path(path).with_suffix(".bin"))
    model.set_rt_info(weights, [META_SECTION, BIN_SHA256])
    _save(model, Path(path))
    if file_sha256(Path(path).with_suffix(".bin")) != weights:
        raise ExportError(f"OpenVINO wrote {Path(path).with_suffix('.bin').name} differently twice; the IR cannot "
                          "name its own weights file: report this with your OpenVINO version")
    return Path(path)


def check_bin(path: str | os.PathLike[str], metadata: dict[str, str]) -> None:
    """The ``.bin`` beside an IR is the one it was saved with (``bin_sha256`` in its metadata), or one line:
    OpenVINO would run another export's weights in this graph without a word."""
    recorded = metadata.get(BIN_SHA256)
    weights = Path(path).with_suffix(".bin")
    if recorded is not None and file_sha256(weights) != recorded:
        from aperture_zoo.provenance import StaleFileError

        raise StaleFileError(f"{str(weights)!r} is not the weights file {Path(path).name} was saved with (SHA-256 "
                             f"{recorded[:12]}...): it came from another export; put the two files of one export "
                             "together, or export it again (aperture export NAME --format openvino ...)")


def _quantize(model, calibration: np.ndarray | None):
    """NNCF post-training int8 (the default mixed preset: symmetric weights, asymmetric activations)."""
    import nncf

    if calibration is None:
        raise ExportError("an OpenVINO int8 file needs training images to calibrate on; pass --data-dir")
    nncf.set_log_level(logging.ERROR)
    # batches of 32 (the IR has a dynamic batch): the statistics are the same, 32 times fewer calls
    items = [calibration[i : i + CALIBRATION_BATCH].astype(np.float32) for i in range(0, len(calibration), CALIBRATION_BATCH)]
    # the calibrator after the logits stays float32, as in the ONNX int8 file (float_tail)
    tail = nncf.IgnoredScope(names=after_logits(model), validate=False)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its progress bars
        return nncf.quantize(model, nncf.Dataset(items), subset_size=len(calibration), fast_bias_correction=True,
                             ignored_scope=tail)


def after_logits(model) -> list[str]:
    """The names of every operation fed, directly or not, by the node that gives the ``logits`` output."""
    from .onnx_export import OUTPUT_NAME

    result = next(o.get_node() for o in model.outputs if OUTPUT_NAME in o.get_names())  # a Result op
    start = result.input_value(0).get_node()
    names, todo = set(), [start]
    while todo:
        node = todo.pop()
        for out in node.outputs():
            for target in out.get_target_inputs():
                child = target.get_node()
                if child.get_friendly_name() not in names:
                    names.add(child.get_friendly_name())
                    todo.append(child)
    return sorted(names)


def _save(model, path: Path) -> None:
    """Both files or neither: saved under temporary names in the folder, then moved into place."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix=".aperture_ov_", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        ov.save_model(model, str(staged), compress_to_fp16=False)
        with atomic_path(path.with_suffix(".bin")) as bin_tmp:
            os.replace(staged.with_suffix(".bin"), bin_tmp)
        with atomic_path(path) as xml_tmp:
            os.replace(staged, xml_tmp)


def read_openvino_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``aperture_zoo`` section of an IR's ``rt_info`` (strings, as in the ONNX metadata)."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    return rt_info_metadata(model)


def rt_info_metadata(model) -> dict[str, str]:
    if not model.has_rt_info([META_SECTION]):
        return {}
    section = model.get_rt_info([META_SECTION]).astype(dict)
    return {str(k): str(v.astype(str) if hasattr(v, "astype") else v) for k, v in section.items()}


def precision_hint(model) -> str | None:
    """The precision the file asks the CPU plugin to compute in (``f32``, ``bf16``), if it says."""
    key = ["runtime_options", "INFERENCE_PRECISION_HINT"]
    return str(model.get_rt_info(key).astype(str)) if model.has_rt_info(key) else None
