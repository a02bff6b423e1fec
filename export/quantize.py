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
from .onnx_export import INPUT_NAME, OUTPUT_NAME, nodes_after_logits, save_checked, set_metadata

DEFAULT_CALIBRATION_IMAGES = 512
# Measured with `aperture runtimes` (README, "Runtime matrix"): OpenCV DNN runs the QDQ int8 file
# wrongly, so the file says so; onnxruntime stays the runtime it is validated for.
INT8_NOT_VALIDATED_FOR = {
    "opencv-dnn": "OpenCV DNN 4.x runs this int8 (QDQ) file wrongly at batch sizes above 1 and 5.0 "
                  "cannot load it; run it with onnxruntime, or use the fp32/fp16 file with OpenCV",
}


def to_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, keep_io_types: bool = True) -> Path:
    """Half-precision weights and compute; float32 ``pixel_values``/``logits`` unless asked otherwise."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))
    # The calibrator after the logits stays float32 (its probabilities equal the numpy map within
    # 1e-4 in every file): taken out before the conversion and put back after it, reading the
    # float32 logits (the converter's own node_block_list breaks SSA on a consumed graph output).
    tail = _detach_calibrator(model)
    # Softmax stays float32 too: onnxruntime before 1.17 has no float16 Softmax kernel on the CPU
    # and expands the op's function body, which is invalid at opset 18.
    converted = convert_float_to_float16(model, keep_io_types=keep_io_types, disable_shape_infer=False,
                                         op_block_list=[*DEFAULT_OP_BLOCK_LIST, "Softmax"])
    # The converter appends the input Casts at the end of the node list; the ONNX spec (and the
    # full checker) want nodes in topological order.
    sorter = OnnxModel(converted)
    sorter.topological_sort()
    converted = sorter.model
    _attach_calibrator(converted, tail)
    set_metadata(converted, {"precision": "fp16", "fp16_io": json.dumps(not keep_io_types)})
    return save_checked(converted, dst)


def _detach_calibrator(model: onnx.ModelProto) -> tuple[list, list, list]:
    """Remove (and return) the nodes after the ``logits`` output, their own initializers and the
    graph outputs they compute (their intermediate value_info goes: shape inference redoes it)."""
    names = set(nodes_after_logits(model))
    nodes = [n for n in model.graph.node if n.name in names]
    inputs = {i for n in nodes for i in n.input}
    used_by_network = {i for n in model.graph.node if n.name not in names for i in n.input}
    inits = [t for t in model.graph.initializer if t.name in inputs and t.name not in used_by_network]
    for shared in [t for t in model.graph.initializer if t.name in inputs and t.name in used_by_network]:
        copy = onnx.TensorProto()  # the network's copy may turn float16; the calibrator keeps its own
        copy.CopyFrom(shared)
        copy.name = f"{shared.name}_calibrator"
        inits.append(copy)
        for node in nodes:
            node.input[:] = [copy.name if i == shared.name else i for i in node.input]
    made = {o for n in nodes for o in n.output}
    outputs = [o for o in model.graph.output if o.name in made]
    infos = [v for v in model.graph.value_info if v.name in made or (v.name in inputs and v.name != OUTPUT_NAME)]
    for field, gone in ((model.graph.node, nodes), (model.graph.initializer, inits), (model.graph.output, outputs),
                        (model.graph.value_info, infos)):
        keep = [x for x in field if all(x is not g for g in gone)]
        del field[:]
        field.extend(keep)
    return nodes, inits, outputs


def _attach_calibrator(model: onnx.ModelProto, tail: tuple[list, list, list]) -> None:
    """Put the detached calibrator back after the converted network, reading float32 logits (a Cast
    first when the file's logits are float16, ``--fp16-io``)."""
    nodes, inits, outputs = tail
    if not nodes:
        return
    logits = next(o for o in model.graph.output if o.name == OUTPUT_NAME)
    source = OUTPUT_NAME
    if logits.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        source = f"{OUTPUT_NAME}_float32"
        model.graph.node.append(onnx.helper.make_node("Cast", [OUTPUT_NAME], [source], to=onnx.TensorProto.FLOAT,
                                                      name="calibrator_input_cast"))
    for node in nodes:
        node.input[:] = [source if i == OUTPUT_NAME else i for i in node.input]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    model.graph.output.extend(outputs)


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
    """Static int8 QDQ quantisation (uint8 activations, int8 per-channel weights).

    ``calibration`` holds the model's inputs as it expects them (pixels in [0, 1] when
    normalisation is in the graph). The file is pre-processed with onnxruntime's
    ``quant_pre_process`` (shape inference, constant folding) as its docs recommend.
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
    with tempfile.TemporaryDirectory(prefix="aperture_int8_") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "quantized.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
        proto = onnx.load(str(prepared))
        tail = nodes_after_logits(proto)  # the calibrator stays float32: its probabilities are the numpy map's
        onnx.save(proto, str(prepared))
        quantize_static(
            str(prepared), str(quantized), _Reader(calibration.astype(np.float32), batch),
            quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=methods[method], nodes_to_exclude=tail,
        )
        model = onnx.load(str(quantized))
    set_metadata(model, {
        **meta, "precision": "int8",
        "int8": json.dumps({"format": "QDQ", "activations": "uint8", "weights": "int8",
                            "per_channel": per_channel, "calibration": method,
                            "calibration_images": int(len(calibration))}),
        "not_validated_for": json.dumps(INT8_NOT_VALIDATED_FOR),
    })
    return save_checked(model, dst)
