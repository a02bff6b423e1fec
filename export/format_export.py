"""One model to one file of any format: the graph, the metadata and the precision, as the ONNX export has them.

Every format's graph is built from the same torch module as the ONNX file (``graph.wrapper``, that is
``onnx_export.ExportedClassifier``:
normalisation inside, ``logits`` and calibrated ``probabilities``), or from that ONNX file itself
(OpenVINO reads ONNX), so a change to the head (a new calibrator) reaches every format at once. Every
file carries the ONNX file's metadata keys in its own format's metadata store (``format`` names the
format, ``precision`` its precision, ``weights_sha256`` the weights it was made from).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from aperture_zoo.calibrators import Calibrator
from aperture_zoo.model import ResNet

from .errors import ExportError
from .formats import FORMATS, require
from .graph import wrapper
from .onnx_export import build_metadata, export_calibrator, to_onnx

def format_metadata(model: ResNet, fmt: str, precision: str, *, weights_sha256: str | None,
                    temperature: float | None, tta: bool, batch: int | None = None,
                    extra: dict[str, str] | None = None, calibrator: Calibrator | None = None) -> dict[str, str]:
    """The ONNX file's metadata, re-labelled for ``fmt`` (all values strings); the calibrator by
    ``onnx_export.export_calibrator``'s rule (``calibrator``, else ``temperature``, else the model's own)."""
    calibrator = export_calibrator(model, temperature=temperature, tta=tta, calibrator=calibrator)
    meta = build_metadata(model, opset=0, normalize=True, exporter="torch.export", batch=batch,
                          weights_sha256=weights_sha256, precision=precision, calibrator=calibrator, tta=tta)
    del meta["opset"], meta["onnx_version"]
    meta["format"] = f"aperture_zoo.{fmt}/1"
    meta.update(extra or {})
    return meta


def export_file(
    model: ResNet,
    fmt: str,
    precision: str,
    path: str | os.PathLike[str],
    *,
    weights_sha256: str | None = None,
    temperature: float | None = None,
    tta: bool = False,
    calibration: np.ndarray | None = None,
    onnx_fp32: Path | None = None,
    batch: int = 1,
) -> Path:
    """Write ``model`` as one ``fmt`` file of ``precision`` at ``path``.

    ``calibration`` (float32 N x 3 x H x W pixels in [0, 1], training images) is needed for int8;
    ``onnx_fp32`` is the fp32 ONNX file OpenVINO converts (exported here when not given).
    ``temperature=None`` takes the model's own calibrator, as ``to_onnx`` does. ``batch``: the fixed batch of the
    ExecuTorch and LiteRT files (1: one image per call; LiteRT's interpreter can resize it, ExecuTorch's
    program cannot); the other formats take any batch.
    """
    require(fmt)
    if precision not in FORMATS[fmt].precisions:
        raise ExportError(f"{fmt} has no {precision} file; its precisions are {', '.join(FORMATS[fmt].precisions)}")
    if precision == "int8" and calibration is None:
        raise ExportError(f"a {fmt} int8 file needs training images to calibrate on; pass --data-dir with CIFAR-10")
    model = model.eval().cpu()
    calibrator = export_calibrator(model, temperature=temperature, tta=tta)  # as to_onnx's: one rule
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = dict(weights_sha256=weights_sha256, temperature=None, calibrator=calibrator, tta=tta)
    if fmt == "onnx":
        raise ExportError("ONNX files are written by export_model (pipeline.py), with their fp16/int8 conversions")
    if fmt == "openvino":
        from .openvino_export import to_openvino

        meta = format_metadata(model, fmt, precision, **kwargs)
        if onnx_fp32 is not None:
            return to_openvino(onnx_fp32, path, precision, meta, calibration)
        with tempfile.TemporaryDirectory(prefix="aperture_openvino_") as tmp:
            source = to_onnx(model, Path(tmp) / f"{model.spec.name}.onnx", calibrator=calibrator, tta=tta)
            return to_openvino(source, path, precision, meta, calibration)
    module = wrapper(model, calibrator=calibrator, tta=tta)
    if fmt == "executorch":
        from .executorch_export import to_executorch

        meta = format_metadata(model, fmt, precision, batch=batch, **kwargs)
        return to_executorch(module, model.spec.input_size, path, precision, meta, calibration, batch=batch)
    if fmt == "coreml":
        from .coreml_export import to_coreml

        meta = format_metadata(model, fmt, precision, **kwargs)
        return to_coreml(module, model.spec.input_size, path, precision, meta)
    from .litert_export import to_tflite

    meta = format_metadata(model, fmt, precision, batch=batch, **kwargs)
    return to_tflite(model, path, precision, meta, calibration, calibrator=calibrator, tta=tta, batch=batch)
