"""torch -> ExecuTorch program (``.pte``), lowered to the XNNPACK delegate: fp32, and int8 by PT2E.

The program is exported at a fixed batch (1 by default: a phone classifies one image; ``batch`` for
more) from the same module as the ONNX file. A dynamic batch axis is not used: with torch 2.14 the
memory planner bounds it at 15 whatever the declared maximum (measured with ExecuTorch 1.5.1), and a
larger batch then fails at run time. A ``.pte`` has no free-form metadata table; the ONNX metadata goes in a constant method of
the program, ``aperture_metadata``, returning one JSON string (ExecuTorch's own way to ship values
with a program: ``program.load_method("aperture_metadata").execute([])``). int8 is XNNPACK's quantiser
(symmetric, per-channel weights, static activations calibrated on training images).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from aperture_zoo.files import atomic_path

from .errors import ExportError

META_METHOD = "aperture_metadata"
CALIBRATION_BATCH = 32


def to_executorch(module: torch.nn.Module, input_size, path: Path, precision: str, meta: dict[str, str],
                  calibration: np.ndarray | None = None, batch: int = 1) -> Path:
    """Write ``module`` as an XNNPACK-delegated ``.pte`` at ``path``, taking ``batch`` images per call."""
    import executorch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    meta = {**meta, "executorch_version": getattr(executorch, "__version__", _version("executorch"))}
    example = torch.rand(batch, *input_size)
    with _quiet():
        if precision == "int8":
            program = _quantize(module, example, calibration)
        else:
            program = torch.export.export(module, (example,))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                              constant_methods={META_METHOD: json.dumps(meta, sort_keys=True)})
        buffer = lowered.to_executorch().buffer
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer)
    return Path(path)


def _quantize(module: torch.nn.Module, example: torch.Tensor, calibration: np.ndarray | None):
    """Calibrated on a dynamic-batch graph in batches (one call per image would be slow), then exported
    at the file's batch."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if calibration is None:
        raise ExportError("an ExecuTorch int8 file needs training images to calibrate on; pass --data-dir")
    from .graph import batch_dim, example_batch, then_tail

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    tail, module = module.probabilities, module.net  # only the network is quantised: the calibrator stays float32
    graph = torch.export.export(module, (example_batch(example.shape[1:]),), dynamic_shapes=(batch_dim(),))
    prepared = prepare_pt2e(graph.module(), quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration), CALIBRATION_BATCH):
            prepared(torch.from_numpy(np.ascontiguousarray(calibration[i : i + CALIBRATION_BATCH], np.float32)))
    converted = convert_pt2e(prepared)
    return torch.export.export(then_tail(converted, tail), (example,))



@contextlib.contextmanager
def _quiet():
    """The tool chain's progress prints and deprecation warnings; a real failure still raises."""
    loggers = [logging.getLogger(n) for n in ("executorch", "torch._export", "torchao")]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, saved):
            lg.setLevel(level)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def read_executorch_metadata(program) -> dict[str, str]:
    """The JSON of the program's ``aperture_metadata`` method ({} when it has none)."""
    if META_METHOD not in program.method_names:
        return {}
    value = program.load_method(META_METHOD).execute([])[0]
    try:
        meta = json.loads(value)
    except (TypeError, ValueError):
        return {}
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
