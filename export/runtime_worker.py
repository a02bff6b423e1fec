"""Run one ONNX file in one runtime and save its logits: the part of the runtime matrix that runs
inside a throw-away environment holding another runtime version.

It imports only numpy and the runtime under test (onnxruntime, OpenCV's ``cv2``, OpenVINO, LiteRT), never
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


def _run_openvino(model: str, pixels: np.ndarray, provider: str, batch: int) -> tuple[np.ndarray, dict]:
    """An ONNX file or an IR, on the CPU, in the precision an IR says (``runtime_options``), else f32."""
    import openvino as ov

    if provider != "cpu":
        raise RuntimeError("only OpenVINO's CPU plugin is run here")
    core = ov.Core()
    net = core.read_model(model)
    key = ["runtime_options", "INFERENCE_PRECISION_HINT"]
    hint = str(net.get_rt_info(key).astype(str)) if net.has_rt_info(key) else "f32"
    compiled = core.compile_model(net, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    out = [compiled({0: np.ascontiguousarray(pixels[i : i + batch])})["logits"] for i in range(0, len(pixels), batch)]
    return np.concatenate(out).astype(np.float32), {"runtime": "openvino", "version": ov.get_version().split("-")[0],
                                                     "provider": f"CPU {hint}"}


def _run_litert(model: str, pixels: np.ndarray, provider: str, batch: int) -> tuple[np.ndarray, dict]:
    """A ``.tflite`` in LiteRT's interpreter, its input resized to each batch."""
    import ai_edge_litert
    from ai_edge_litert.interpreter import Interpreter

    if provider != "cpu":
        raise RuntimeError("only LiteRT's CPU path is run here")
    interpreter = Interpreter(model)
    index = interpreter.get_input_details()[0]["index"]
    logits = sorted(interpreter.get_output_details(), key=lambda o: o["name"])[0]["index"]  # output_0: logits
    out = []
    for i in range(0, len(pixels), batch):
        chunk = np.ascontiguousarray(pixels[i : i + batch])
        interpreter.resize_tensor_input(index, list(chunk.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, chunk)
        interpreter.invoke()
        out.append(np.array(interpreter.get_tensor(logits)))
    return np.concatenate(out).astype(np.float32), {"runtime": "litert",
                                                     "version": getattr(ai_edge_litert, "__version__", "?"),
                                                     "provider": "CPU"}


def _run_executorch(model: str, pixels: np.ndarray, provider: str, batch: int) -> tuple[np.ndarray, dict]:
    """A ``.pte`` in ExecuTorch's Python runtime (which takes torch tensors: torch is part of that runtime)."""
    import torch
    from executorch.runtime import Runtime

    if provider != "cpu":
        raise RuntimeError("only ExecuTorch's CPU (XNNPACK) path is run here")
    method = Runtime.get().load_program(model).load_method("forward")
    out = [method.execute([torch.from_numpy(np.ascontiguousarray(pixels[i : i + batch]))])[0].numpy()
           for i in range(0, len(pixels), batch)]
    from importlib.metadata import version

    return np.concatenate(out).astype(np.float32), {"runtime": "executorch", "version": version("executorch"),
                                                     "provider": "XNNPACK"}


RUNNERS = {"executorch": _run_executorch, "onnxruntime": _run_onnxruntime, "opencv-dnn": _run_opencv, "openvino": _run_openvino,
           "litert": _run_litert}


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
