"""litert-torch's conversion of one model, runnable in the tool-chain environment ``litert_export`` makes::

    python litert_worker.py model.safetensors resnet22 out.tflite --precision int8 --calibration calib.npy

It builds the same module as the ONNX export (``graph.wrapper``) from the safetensors weights
and writes the bare flatbuffer; ``litert_export.to_tflite`` adds the metadata and moves it into place.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

CALIBRATION_BATCH = 32  # calibrated on a dynamic-batch graph in batches, then converted at the file's batch


def convert(model, out: Path, precision: str, calibration: np.ndarray | None, *, calibrator,
            tta: bool, batch: int = 1) -> Path:
    """Convert ``model`` to a bare ``.tflite`` at ``out`` (fixed ``batch``)."""
    import torch

    from aperture_zoo.export.graph import wrapper

    module = wrapper(model.eval().cpu(), calibrator=calibrator, tta=tta, sort_free=True)
    example = (torch.rand(batch, *model.spec.input_size),)
    with _quiet():
        import litert_torch

        if precision == "int8":
            edge = _quantized(litert_torch, module, example, calibration)
        else:
            edge = litert_torch.convert(module, example)
        edge.export(str(out))
    return out


def _quantized(litert_torch, module, example, calibration: np.ndarray | None):
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if calibration is None:
        raise ValueError("an int8 LiteRT file needs calibration images")
    from aperture_zoo.export.graph import batch_dim, example_batch

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    tail, module = module.probabilities, module.net  # only the network is quantised: the calibrator stays float32
    graph = torch.export.export(module, (example_batch(example[0].shape[1:]),), dynamic_shapes=(batch_dim(),))
    prepared = prepare_pt2e(graph.module(), quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration), CALIBRATION_BATCH):
            prepared(torch.from_numpy(np.ascontiguousarray(calibration[i : i + CALIBRATION_BATCH], np.float32)))
    converted = convert_pt2e(prepared, fold_quantize=False)
    from aperture_zoo.export.graph import then_tail

    return litert_torch.convert(then_tail(converted, tail), example, quant_config=QuantConfig(pt2e_quantizer=quantizer))


@contextlib.contextmanager
def _quiet():
    """litert-torch prints a progress tree and logs on stderr; failures still raise."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("litert_torch").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights")
    parser.add_argument("arch")
    parser.add_argument("out")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calibrator", help="the calibrator's record (JSON); none: the plain softmax")
    parser.add_argument("--tta", choices=("flip", "none"), default="none")
    parser.add_argument("--calibration")
    args = parser.parse_args(argv)
    from aperture_zoo.pretrained import load

    model = load(args.arch, weights=args.weights)
    calibration = np.load(args.calibration) if args.calibration else None
    from aperture_zoo.calibrators import Calibrator

    calibrator = Calibrator.from_dict(json.loads(args.calibrator)) if args.calibrator else None
    convert(model, Path(args.out), args.precision, calibration, calibrator=calibrator,
            tta=args.tta == "flip", batch=args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
