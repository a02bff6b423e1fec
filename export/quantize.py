"""Reduced-precision variants of an exported file: fp16 and int8 (static, QDQ).

Both start from the checked fp32 file and use the libraries built for it:
``onnxruntime.transformers.float16`` (the onnxconverter-common converter shipped with
onnxruntime) keeps the float32 inputs/outputs so apps need no change, and
``onnxruntime.quantization.quantize_static`` calibrates activation ranges on a stratified sample
of *training* images (never the test set the accuracy is reported on).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .errors import ExportError
from . import float_tail
from .onnx_export import INPUT_NAME, save_checked, set_metadata

DEFAULT_CALIBRATION_IMAGES = 512
# Measured with `aperture runtimes` (README, "Runtime matrix"): OpenCV DNN runs the QDQ int8 file
# wrongly, so the file says so; onnxruntime stays the runtime it is validated for.
INT8_NOT_VALIDATED_FOR = {
    "opencv-dnn": "OpenCV DNN 4.x runs this int8 (QDQ) file wrongly at batch sizes above 1 and 5.0 "
                  "cannot load it; run it with onnxruntime, or use the fp32/fp16 file with OpenCV",
}


def to_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, keep_io_types: bool = True) -> Path:
    """Half-precision weights and compute; float32 ``pixel_values``/``logits`` unless asked otherwise.

    Only the backbone is converted: what follows the logits (``float_tail``: the calibrator and its
    Softmax, which onnxruntime before 1.17 could not even run in float16 at opset 18) stays float32,
    so ``probabilities`` is the calibrator applied to the file's own logits (within 1e-4).
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    original = onnx.load(str(src))
    backbone, tail, own = float_tail.split(original)  # the calibrator and Softmax stay float32
    converted = convert_float_to_float16(backbone, keep_io_types=keep_io_types, disable_shape_infer=False,
                                         op_block_list=list(DEFAULT_OP_BLOCK_LIST))
    converted = float_tail.join(converted, original, tail, own, float16_outputs=not keep_io_types)
    # The converter appends the input Casts at the end of the node list; the ONNX spec (and the
    # full checker) want nodes in topological order.
    sorter = OnnxModel(converted)
    sorter.topological_sort()
    converted = sorter.model
    set_metadata(converted, {"precision": "fp16", "fp16_io": json.dumps(not keep_io_types)})
    return save_checked(converted, dst)


def calibration_pixels(
    data_dir: str | os.PathLike[str] | None, n: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0,
    train: Any = None,
) -> np.ndarray:
    """``n`` training images (n/K per class, random) as float32 N x 3 x 32 x 32 in [0, 1].

    ``train``: a ``data.Split`` to draw from (another dataset's training split) instead of CIFAR-10's.
    """
    from aperture_zoo.data import load_split, stratified_indices

    train = train if train is not None else load_split("train", data_dir)
    n = min(n, len(train))
    idx = stratified_indices(train.labels, n, seed)
    return train.images[idx].astype(np.float32) / 255.0


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an in-memory array, in batches."""

    def __init__(self, pixels: np.ndarray, batch: int) -> None:
        self._pixels, self._batch = pixels, batch
        self._it = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self._pixels), self._batch):
            yield {INPUT_NAME: self._pixels[i : i + self._batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def to_int8(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calibration: np.ndarray,
    *,
    per_channel: bool = True,
    method: str = "minmax",
) -> Path:
    """Static int8 QDQ quantisation (uint8 activations, int8 per-channel weights) of the backbone.

    ``calibration`` holds the model's inputs as it expects them (pixels in [0, 1] when
    normalisation is in the graph). The file is pre-processed with onnxruntime's
    ``quant_pre_process`` (shape inference, constant folding) as its docs recommend. Only the
    backbone is pre-processed and quantised (``float_tail``, as in the fp16 file): what follows the
    ``logits`` output (the calibrator and its Softmax) stays float32 — quantised, the probabilities
    would sum to 0.99 — and onnxruntime's symbolic shape inference cannot type an adaptive
    calibrator's nodes at all.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ExportError(f"unknown calibration method {method!r}; use one of {', '.join(methods)}")
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ExportError(f"int8 calibration needs a non-empty N x C x H x W array, got {calibration.shape}")
    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    fixed_batch = json.loads(meta.get("input", "{}")).get("shape", ["N"])[0]
    batch = fixed_batch if isinstance(fixed_batch, int) else 64
    if isinstance(fixed_batch, int):
        calibration = calibration[: len(calibration) // batch * batch] if len(calibration) >= batch else np.resize(calibration, (batch, *calibration.shape[1:]))
    original = onnx.load(str(src))
    backbone, tail, own = float_tail.split(original)
    with tempfile.TemporaryDirectory(prefix="aperture_int8_") as tmp:
        body, prepared, quantized = (Path(tmp) / f"{n}.onnx" for n in ("backbone", "prepared", "quantized"))
        onnx.save_model(backbone, str(body))
        quant_pre_process(str(body), str(prepared), skip_symbolic_shape=False)
        quantize_static(
            str(prepared), str(quantized), _Reader(calibration.astype(np.float32), batch),
            quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
        )
        model = float_tail.join(onnx.load(str(quantized)), original, tail, own, float16_outputs=False)
    set_metadata(model, {
        **meta, "precision": "int8",
        "int8": json.dumps({"format": "QDQ", "activations": "uint8", "weights": "int8",
                            "per_channel": per_channel, "calibration": method,
                            "calibration_images": int(len(calibration))}),
        "not_validated_for": json.dumps(INT8_NOT_VALIDATED_FOR),
    })
    return save_checked(model, dst)

