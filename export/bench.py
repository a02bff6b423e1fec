"""Throughput of one model through every runtime we ship: torch eager (NCHW and channels_last),
torch.compile, and onnxruntime fp32 / fp16 / int8, as images per second.

Numbers are measured, never asserted: each variant gets warm-up runs, then is timed until
``min_seconds`` have passed (at least ``min_iters`` runs); the median per-iteration time is
reported. Ratios are to torch eager NCHW at the same batch size and device.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from aperture_zoo.model import ResNet

from .onnx_export import INPUT_NAME, NormalizedClassifier, to_onnx
from .quantize import DEFAULT_CALIBRATION_IMAGES, calibration_pixels, to_fp16, to_int8
from .runtime import create_session

VARIANTS: tuple[str, ...] = (
    "torch eager", "torch channels_last", "torch.compile", "onnxruntime fp32", "onnxruntime fp16",
    "onnxruntime int8",
)


@dataclass
class BenchRow:
    variant: str
    device: str
    batch: int
    images_per_s: float | None
    ratio_to_eager: float | None = None
    ms_per_batch: float | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _time(fn: Callable[[], object], sync: Callable[[], None], warmup: int, min_seconds: float, min_iters: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _torch_runner(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return module(x)

    return run


def run_benchmark(
    model: ResNet,
    *,
    batch_sizes: Sequence[int] = (1, 256),
    device: str = "cpu",
    variants: Sequence[str] = VARIANTS,
    data_dir: str | os.PathLike[str] | None = None,
    exporter: str = "dynamo",
    min_seconds: float = 2.0,
    min_iters: int = 3,
    warmup: int = 2,
    progress: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    """Images/s per (variant, batch size) on ``device`` ('cpu' or 'cuda').

    int8 is calibrated on ``data_dir``'s training images when given, else on uniform noise
    (fine for speed, meaningless for accuracy — the row's note says so).
    """
    say = progress or (lambda _m: None)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}; choose from {list(VARIANTS)}")
    if device == "cuda" and not torch.cuda.is_available():
        from .errors import ExportError

        raise ExportError("--device cuda was requested but torch sees no CUDA GPU; use --device cpu")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    provider = "cuda" if device == "cuda" else "cpu"
    model = model.eval()
    wrapped = NormalizedClassifier(model).eval()
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="aperture_bench_") as tmp:
        files: dict[str, Path] = {}
        notes: dict[str, str] = {}
        if any(v.startswith("onnxruntime") for v in variants):
            say("exporting ONNX files")
            files["fp32"] = to_onnx(model, Path(tmp) / "m.onnx", exporter=exporter)  # type: ignore[arg-type]
            if "onnxruntime fp16" in variants:
                files["fp16"] = to_fp16(files["fp32"], Path(tmp) / "m.fp16.onnx")
            if "onnxruntime int8" in variants:
                if data_dir is not None:
                    calib = calibration_pixels(data_dir, DEFAULT_CALIBRATION_IMAGES)
                else:
                    calib = np.random.default_rng(0).random((256, *model.spec.input_size), dtype=np.float32)
                    notes["int8"] = "calibrated on noise (speed only)"
                files["int8"] = to_int8(files["fp32"], Path(tmp) / "m.int8.onnx", calib)
        for batch in batch_sizes:
            pixels = np.random.default_rng(batch).random((batch, *model.spec.input_size), dtype=np.float32)
            x = torch.from_numpy(pixels).to(device)
            eager: float | None = None
            for variant in variants:
                say(f"{variant} batch {batch}")
                note = ""
                try:
                    if variant.startswith("onnxruntime"):
                        precision = variant.split()[-1]
                        session = create_session(files[precision], provider)  # type: ignore[arg-type]
                        note = notes.get(precision, "")
                        fn: Callable[[], object] = lambda s=session: s.run(None, {INPUT_NAME: pixels})  # noqa: E731
                    else:
                        module = wrapped.to(device)
                        xin = x
                        if variant in ("torch channels_last", "torch.compile"):
                            module = NormalizedClassifier(model).eval().to(device, memory_format=torch.channels_last)
                            xin = x.contiguous(memory_format=torch.channels_last)
                        if variant == "torch.compile":
                            module = torch.compile(module)
                            note = "channels_last; compile time excluded"
                        fn = _torch_runner(module, xin)
                    seconds = _time(fn, sync, warmup, min_seconds, min_iters)
                    row = BenchRow(variant, device, batch, batch / seconds, ms_per_batch=seconds * 1e3, note=note)
                except Exception as exc:  # noqa: BLE001 - a failing runtime is a result, not a crash
                    row = BenchRow(variant, device, batch, None, note=f"failed: {type(exc).__name__}: {str(exc)[:120]}")
                if variant == "torch eager":
                    eager = row.images_per_s
                if eager and row.images_per_s:
                    row.ratio_to_eager = row.images_per_s / eager
                rows.append(row)
    return rows
