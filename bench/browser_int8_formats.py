"""Does another int8 file format run faster in the demo page? Prints, never asserts.

Quantises the published resnet22 five ways with onnxruntime's ``quantize_static`` (QDQ with uint8
activations and int8 per-channel weights, the zoo's format; int8 activations; QOperator; uint8
weights; per-tensor weights), then times each file at batch 1 on one thread natively
(onnxruntime's CPU provider) and in the demo page (onnxruntime-web in headless Chromium), fp32 beside.

    python bench/browser_int8_formats.py --data-dir DIR_WITH_CIFAR10 [--runs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def variants() -> dict[str, dict]:
    from onnxruntime.quantization import QuantFormat, QuantType

    qdq, u8, s8 = QuantFormat.QDQ, QuantType.QUInt8, QuantType.QInt8
    return {
        "int8": dict(quant_format=qdq, per_channel=True, activation_type=u8, weight_type=s8),  # the zoo's
        "int8-s8s8": dict(quant_format=qdq, per_channel=True, activation_type=s8, weight_type=s8),
        "int8-qoperator": dict(quant_format=QuantFormat.QOperator, per_channel=True, activation_type=u8, weight_type=s8),
        "int8-u8u8": dict(quant_format=qdq, per_channel=True, activation_type=u8, weight_type=u8),
        "int8-per-tensor": dict(quant_format=qdq, per_channel=False, activation_type=u8, weight_type=s8),
    }


def native_ms(path: Path, seconds: float = 2.0) -> tuple[float, float]:
    """(best, median) ms per image, onnxruntime CPU provider, one thread, batch 1."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)}
    for _ in range(20):
        sess.run(None, feed)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return 1000 * min(times), 1000 * float(np.median(times))


def main() -> None:
    from onnxruntime.quantization import CalibrationDataReader, quant_pre_process, quantize_static

    import aperture_zoo
    from aperture_zoo.browser import find_chromium, time_page
    from aperture_zoo.demo import DemoFile, DemoModel, DemoServer, web_dir, write_manifest
    from aperture_zoo.export.onnx_export import INPUT_NAME, to_onnx
    from aperture_zoo.export.quantize import calibration_pixels

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder containing cifar-10-batches-py/ (calibration)")
    p.add_argument("--runs", type=int, default=40)
    args = p.parse_args()
    calib = calibration_pixels(args.data_dir, 256)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict | None:
            if self.i >= len(calib):
                return None
            self.i += 64
            return {INPUT_NAME: calib[self.i - 64:self.i]}

    with tempfile.TemporaryDirectory(prefix="int8_formats_") as tmp:
        out = Path(tmp)
        model = aperture_zoo.load("resnet22", pretrained=True)
        fp32 = to_onnx(model, out / "resnet22.onnx", exporter="legacy")
        prepared = out / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
        files = [DemoFile("fp32", fp32.name, fp32.stat().st_size)]
        for name, kw in variants().items():
            dst = out / f"resnet22.{name}.onnx"
            quantize_static(str(prepared), str(dst), Reader(), **kw)
            files.append(DemoFile(name, dst.name, dst.stat().st_size))
        write_manifest(out, [DemoModel(name="resnet22", params=sum(p.numel() for p in model.parameters()),
                                       available=True, file=fp32.name, bytes=fp32.stat().st_size,
                                       labels=list(model.spec.label_names), input_size=list(model.spec.input_size),
                                       files=files, precision="fp32")])
        chromium = find_chromium()
        with DemoServer(web_dir(), out, port=0) as server:
            for f in files:
                best, median = native_ms(out / f.file)
                page = time_page(server.url, "resnet22", "browser-wasm", f.precision, 1, args.runs, chromium)
                print(json.dumps({"file": f.precision, "native_best_ms": round(best, 2), "native_median_ms": round(median, 2),
                                  "page_best_ms": page.min_ms, "page_median_ms": page.median_ms, "page_ep": page.ep,
                                  "page_threads": page.threads, "load_average": round(os.getloadavg()[0], 2),
                                  "note": page.note}), flush=True)


if __name__ == "__main__":
    main()
