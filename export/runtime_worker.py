"""Run one ONNX file in one runtime and save its logits: the part of the runtime matrix that runs
inside a throw-away environment holding another runtime version.

It imports only numpy and the runtime under test (onnxruntime or OpenCV's ``cv2``), never
aperture_zoo, so that an environment with nothing but ``numpy`` and that runtime can run it::

    python runtime_worker.py onnxruntime model.onnx pixels.npy logits.npy [--provider cuda] [--batch 100]

``pixels.npy`` holds float32 N x 3 x H x W pixels in [0, 1]; ``logits.npy`` gets float32 N x classes.
The last line on stdout is JSON: ``{"runtime", "version", "provider"}``, or ``{"error"}`` (exit 3)
when the runtime cannot load or run the file.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _run_onnxruntime(model: str, pixels: np.ndarray, provider: str, batch: int) -> tuple[np.ndarray, dict]:
    import onnxruntime as ort

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model, sess_options=opts, providers=providers)
    used = session.get_providers()[0]
    if provider == "cuda" and used != "CUDAExecutionProvider":
        raise RuntimeError(f"the CUDA provider did not start (got {used})")
    name = session.get_inputs()[0].name
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    out = [session.run(None, {name: pixels[i : i + batch].astype(dtype)})[0] for i in range(0, len(pixels), batch)]
    return np.concatenate(out).astype(np.float32), {"runtime": "onnxruntime", "version": ort.__version__,
                                                     "provider": used}


def _run_opencv(model: str, pixels: np.ndarray, provider: str, batch: int) -> tuple[np.ndarray, dict]:
    import cv2

    if provider != "cpu":
        raise RuntimeError("only OpenCV DNN's CPU backend is run here")
    net = cv2.dnn.readNetFromONNX(model)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    out = []
    for i in range(0, len(pixels), batch):
        net.setInput(np.ascontiguousarray(pixels[i : i + batch], dtype=np.float32))
        # by name: forward() alone gives the last output, the calibrated `probabilities`
        out.append(np.asarray(net.forward("logits")).reshape(len(pixels[i : i + batch]), -1))
    return np.concatenate(out).astype(np.float32), {"runtime": "opencv-dnn", "version": cv2.__version__,
                                                     "provider": "CPU"}


RUNNERS = {"onnxruntime": _run_onnxruntime, "opencv-dnn": _run_opencv}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runtime", choices=sorted(RUNNERS))
    parser.add_argument("model")
    parser.add_argument("pixels")
    parser.add_argument("logits")
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args(argv)
    pixels = np.load(args.pixels)
    try:
        logits, info = RUNNERS[args.runtime](args.model, pixels, args.provider, args.batch)
    except Exception as exc:  # noqa: BLE001 - any failure of the runtime is the cell's result
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        print(json.dumps({"error": f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:500]}))
        return 3
    np.save(args.logits, logits)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
