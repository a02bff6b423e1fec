"""Throughput of one model through every runtime we ship: torch eager (NCHW and channels_last),
torch.compile, and onnxruntime fp32 / fp16 / int8, as images per second.

Numbers are measured, never asserted: each variant gets warm-up runs, then is timed until
``min_seconds`` have passed (at least ``min_iters`` runs); the median per-iteration time is
reported. Ratios are to torch eager NCHW, and for onnxruntime rows also to onnxruntime fp32 (the
int8 target is >= 2x that on CPU), at the same batch size and device. Variants have shell-friendly
names (``torch-eager``, ..., ``ort-int8``); the spaced names of earlier versions are still accepted.

``aperture bench NAME`` is a thin layer over ``run_benchmark`` and ``format_table``;
``environment()`` records what the figures depend on besides the model, for a baseline.
"""

from __future__ import annotations

import copy
import math
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
from .bench_formats import FORMAT_VARIANTS, export_bench_files, format_runner
from .runtime import create_session, parse_cuda_options

# Shell-friendly names (no spaces: `--variants torch-eager,ort-int8` needs no quoting).
VARIANTS: tuple[str, ...] = (
    "torch-eager", "torch-channels-last", "torch-compile", "ort-fp32", "ort-fp16", "ort-int8",
    *FORMAT_VARIANTS,
)
# What `--variants all` runs: the formats' rows only where their runtime is installed.
ORT_AND_TORCH: tuple[str, ...] = VARIANTS[:6]
# The names of earlier versions, still accepted so existing scripts keep working.
OLD_NAMES: dict[str, str] = {
    "torch eager": "torch-eager", "torch channels_last": "torch-channels-last", "torch.compile": "torch-compile",
    "onnxruntime fp32": "ort-fp32", "onnxruntime fp16": "ort-fp16", "onnxruntime int8": "ort-int8",
}


def canonical_variants(names: Sequence[str]) -> list[str]:
    """``names`` with old spellings mapped to today's; unknown names are an error listing the valid ones."""
    from .errors import ExportError

    chosen = [OLD_NAMES.get(n, n) for n in names]
    bad = [n for n, c in zip(names, chosen) if c not in VARIANTS]
    if bad or not chosen:
        raise ExportError(f"unknown variant(s) {bad or list(names)}; choose from {', '.join(VARIANTS)} (or 'all')")
    return chosen


@dataclass
class BenchRow:
    variant: str
    device: str
    batch: int
    images_per_s: float | None
    ratio_to_eager: float | None = None
    ms_per_batch: float | None = None
    note: str = ""
    ratio_to_ort_fp32: float | None = None   # onnxruntime (ort-*) rows only
    threads: int | None = None               # intra-op / WebAssembly threads; None: the runtime's default
    repeat: int = 0                          # which pass of a run measured with repeats (the spread)

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


def parse_batch_sizes(text: str) -> list[int]:
    """``"1,256"`` -> ``[1, 256]``, with a clear error for anything else."""
    from .errors import ExportError

    try:
        sizes = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(b < 1 for b in sizes):
        raise ExportError(f"--batch-sizes must be positive integers separated by commas, got {text!r}")
    return sizes


def parse_variants(text: str) -> list[str]:
    """``"all"`` or a comma-separated subset of VARIANTS (old spaced names accepted)."""
    from .errors import ExportError

    if text.strip() == "all":
        from .formats import FORMATS, missing_modules

        return [*ORT_AND_TORCH, *[v for v, (f, _) in FORMAT_VARIANTS.items()
                                  if not missing_modules(FORMATS["openvino" if v.startswith("ov-") else f].runtime_modules)
                                  and not missing_modules(FORMATS["openvino" if v.startswith("ov-") else f].modules)]]
    chosen = [v.strip() for v in text.split(",") if v.strip()]
    if not chosen:
        raise ExportError(f"unknown variant(s) [{text!r}]; choose from {', '.join(VARIANTS)} (or 'all')")
    return canonical_variants(chosen)


def default_devices() -> list[str]:
    """CPU, plus CUDA when torch sees a GPU (onnxruntime rows on CUDA then say if it cannot run)."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def run_benchmark(
    model: ResNet,
    *,
    batch_sizes: Sequence[int] = (1, 256),
    device: str | Sequence[str] = "cpu",
    variants: Sequence[str] = VARIANTS,
    data_dir: str | os.PathLike[str] | None = None,
    exporter: str = "dynamo",
    min_seconds: float = 2.0,
    min_iters: int = 3,
    warmup: int = 2,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    cuda_options: str | dict | None = None,
    io_binding: bool = False,
    torch_threads: bool = False,
    thread_counts: Sequence[int] | None = None,
    repeats: int = 1,
) -> list[BenchRow]:
    """Images/s per (device, variant, batch size).

    ``device`` is 'cpu', 'cuda', 'auto' (CPU, plus CUDA when present) or a list of them. int8 is
    calibrated on ``data_dir``'s training images when given, else on uniform noise (fine for
    speed, meaningless for accuracy — the row's note says so). A variant that fails (e.g.
    torch.compile without a C++ compiler) is a row with no number and the error as its note.
    ``threads`` sets onnxruntime's intra-op threads (None: its default, all physical cores), and the other
    formats' runtimes' (OpenVINO, ExecuTorch's XNNPACK pool, LiteRT); ``torch_threads`` sets torch's too
    (``torch.set_num_threads``, restored after), so that every row of a table runs on the same cores.
    ``thread_counts`` times every row at each of these thread counts, and ``repeats`` repeats the whole
    table (rows say which pass: ``repeat``), all with the files exported once: ratios and their spread come
    from one run on the same machine load.
    ``cuda_options`` go to onnxruntime's CUDA provider on the ``cuda`` device (checked everywhere);
    ``io_binding`` times onnxruntime with its input and output in buffers on the device (no host
    copies in the timed run), which ``enable_cuda_graph=1`` needs and so implies.
    """
    import logging

    # torch.compile imports torch.utils.cpp_extension, which logs "No CUDA runtime is found" on every
    # CPU-only machine with a CUDA toolkit path: noise in a table of figures (a real failure is a row's note).
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    say = progress or (lambda _m: None)
    options = parse_cuda_options(cuda_options)
    bound = io_binding or options.get("enable_cuda_graph") == "1"
    variants = canonical_variants(variants)
    devices = _checked_devices(device, batch_sizes, min_seconds, min_iters, warmup)
    model = copy.deepcopy(model).eval().cpu()  # the caller's model stays where it is
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="aperture_bench_") as tmp:
        files: dict[str, Path] = {}
        notes: dict[str, str] = {}
        formats = [v for v in variants if v in FORMAT_VARIANTS]
        calib = None
        if any(v.startswith("ort-") for v in variants) or formats:
            say("exporting ONNX files")
            files["fp32"] = to_onnx(model, Path(tmp) / "m.onnx", exporter=exporter)  # type: ignore[arg-type]
            if "ort-fp16" in variants:
                files["fp16"] = to_fp16(files["fp32"], Path(tmp) / "m.fp16.onnx")
            if "ort-int8" in variants or any(v.endswith("int8") for v in formats):
                if data_dir is not None:
                    calib = calibration_pixels(data_dir, DEFAULT_CALIBRATION_IMAGES)
                else:
                    calib = np.random.default_rng(0).random((256, *model.spec.input_size), dtype=np.float32)
                    notes["int8"] = "calibrated on noise (speed only)"
                files["int8"] = to_int8(files["fp32"], Path(tmp) / "m.int8.onnx", calib)
        if formats:
            format_files, failed = export_bench_files(model, formats, Path(tmp), calib, files, say, batch_sizes)
            files.update(format_files)  # type: ignore[arg-type]
            notes.update({v: f"failed: {why}" for v, why in failed.items()})
            if "int8" in notes:
                notes.update({v: notes["int8"] for v in formats if v.endswith("int8")})
        saved = torch.get_num_threads()
        try:
            for repeat in range(repeats):
                for count in (thread_counts or [threads]):
                    if torch_threads and count:
                        torch.set_num_threads(count)
                    for dev in devices:
                        part = _bench_device(model, dev, batch_sizes, variants, files, notes, warmup, min_seconds,
                                             min_iters, say, count, options if dev == "cuda" else {}, bound,
                                             torch_threads)
                        for row in part:
                            row.repeat = repeat
                        rows += add_ratios(part)
        finally:
            torch.set_num_threads(saved)
    return rows


def _checked_devices(device: str | Sequence[str], batch_sizes: Sequence[int], min_seconds: float, min_iters: int,
                     warmup: int) -> list[str]:
    """The devices to time on, every option checked first (one line naming it)."""
    from .errors import ExportError

    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ExportError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if not math.isfinite(min_seconds) or min_seconds < 0 or min_iters < 1 or warmup < 0:
        raise ExportError(f"--min-seconds must be >= 0 (got {min_seconds:g}); timing needs >= 1 run and >= 0 warm-ups")
    devices = default_devices() if device == "auto" else [device] if isinstance(device, str) else list(device)
    for d in devices:
        if d not in ("cpu", "cuda"):
            raise ExportError(f"--device must be cpu, cuda or auto, got {d!r}")
        if d == "cuda" and not torch.cuda.is_available():
            raise ExportError("--device cuda was requested but torch sees no CUDA GPU; use --device cpu")
    return devices


def _bench_device(model: ResNet, device: str, batch_sizes: Sequence[int], variants: Sequence[str],
                  files: dict[str, Path], notes: dict[str, str], warmup: int, min_seconds: float,
                  min_iters: int, say: Callable[[str], None], threads: int | None = None,
                  cuda_options: dict[str, str] | None = None, io_binding: bool = False,
                  torch_threads: bool = False) -> list[BenchRow]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    provider = "cuda" if device == "cuda" else "cpu"
    model = copy.deepcopy(model).to(device)
    rows: list[BenchRow] = []
    for batch in batch_sizes:
        pixels = np.random.default_rng(batch).random((batch, *model.spec.input_size), dtype=np.float32)
        x = torch.from_numpy(pixels).to(device)
        for variant in variants:
            say(f"{variant} on {device}, batch {batch}")
            note = ""
            try:
                if variant in FORMAT_VARIANTS:
                    path = files.get(f"{variant}@{batch}", files.get(variant))
                    if path is None:
                        raise RuntimeError(notes[variant].removeprefix("failed: "))
                    if device != "cpu":
                        raise RuntimeError(f"{variant} is timed on the CPU only")
                    note = notes.get(variant, "")
                    fn = format_runner(variant, path, pixels, threads)
                elif variant.startswith("ort-"):
                    precision = variant.removeprefix("ort-")
                    session = create_session(files[precision], provider, threads=threads,  # type: ignore[arg-type]
                                             cuda_options=cuda_options)
                    note = "; ".join(n for n in (notes.get(precision, ""), _ort_note(cuda_options, io_binding)) if n)
                    fn: Callable[[], object] = _bound_runner(session, pixels, device)[0] if io_binding else \
                        (lambda s=session: s.run(None, {INPUT_NAME: pixels}))
                else:
                    # a copy per variant: .to(memory_format=...) converts parameters in place, and
                    # eager NCHW must not run on channels_last weights left by an earlier variant
                    module = NormalizedClassifier(copy.deepcopy(model)).eval().to(device)
                    xin = x
                    if variant in ("torch-channels-last", "torch-compile"):
                        module = module.to(memory_format=torch.channels_last)
                        xin = x.contiguous(memory_format=torch.channels_last)
                    if variant == "torch-compile":
                        module = torch.compile(module)
                        note = "channels_last; compile time excluded"
                    fn = _torch_runner(module, xin)
                seconds = _time(fn, sync, warmup, min_seconds, min_iters)
                row = BenchRow(variant, device, batch, batch / seconds, ms_per_batch=seconds * 1e3, note=note,
                               threads=threads if not variant.startswith("torch-") or torch_threads else None)
            except Exception as exc:  # noqa: BLE001 - a failing runtime is a result, not a crash
                first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
                row = BenchRow(variant, device, batch, None, note=f"failed: {type(exc).__name__}: {first}")
            rows.append(row)
    if "torch-compile" in variants:
        torch._dynamo.reset()  # compiled graphs hold the model; free them between devices
    return add_ratios(rows)


def _ort_note(cuda_options: dict[str, str] | None, io_binding: bool) -> str:
    parts = [f"{k}={v}" for k, v in (cuda_options or {}).items()] + (["io binding"] if io_binding else [])
    return ", ".join(parts)


def _bound_runner(session, pixels: np.ndarray, device: str) -> tuple[Callable[[], object], object]:
    """onnxruntime with its input and output bound to buffers on ``device``: no host copies per run.

    The buffers stay at fixed addresses, which a captured CUDA graph (``enable_cuda_graph=1``) requires.
    Returns the run and its output ``OrtValue`` (what each run writes).
    """
    import onnxruntime as ort

    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    x = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(pixels, dtype=dtype), device, 0)
    out_dtype = np.float16 if out.type == "tensor(float16)" else np.float32
    y = ort.OrtValue.ortvalue_from_numpy(np.zeros((pixels.shape[0], out.shape[-1]), dtype=out_dtype), device, 0)
    binding = session.io_binding()
    binding.bind_ortvalue_input(inp.name, x)
    binding.bind_ortvalue_output(out.name, y)
    return (lambda: session.run_with_iobinding(binding)), y


def add_ratios(rows: list[BenchRow]) -> list[BenchRow]:
    """Fill each row's ratios to torch eager and onnxruntime fp32 at the same device and batch."""
    def same(r: BenchRow, variant: str) -> float | None:  # same device, batch, pass, and thread count if set
        return next((o.images_per_s for o in rows if o.variant == variant and o.device == r.device
                     and o.batch == r.batch and o.repeat == r.repeat and o.threads in (r.threads, None)), None)

    for r in rows:
        if r.images_per_s is None:
            continue
        eager = same(r, "torch-eager")
        fp32 = same(r, "ort-fp32")
        r.ratio_to_eager = r.images_per_s / eager if eager else None
        r.ratio_to_ort_fp32 = r.images_per_s / fp32 if fp32 and not r.variant.startswith(("torch-", "browser-")) else None
    return rows


def format_table(rows: Sequence[BenchRow], title: str = "") -> str:
    """The rows as a Markdown table (what the CLI prints, in plain text; pastes into notes).

    Notes (and failures) are footnotes under the table, so it stays within 80 columns.
    """
    notes: list[str] = []
    for r in rows:
        if r.note and r.note not in notes:
            notes.append(r.note)
    threads = any(r.threads is not None for r in rows)  # a column only when some row set its threads
    head = ["runtime", "device", *(["threads"] if threads else []), "batch", "images/s", "ms/batch", "× eager",
            "× fp32"]
    body = [
        [r.variant + (f" [{notes.index(r.note) + 1}]" if r.note else ""), r.device,
         *(["default" if r.threads is None else str(r.threads)] if threads else []), str(r.batch),
         "—" if r.images_per_s is None else f"{r.images_per_s:,.0f}",
         "—" if r.ms_per_batch is None else f"{r.ms_per_batch:.2f}",
         "—" if r.ratio_to_eager is None else f"{r.ratio_to_eager:.2f}",
         "—" if r.ratio_to_ort_fp32 is None else f"{r.ratio_to_ort_fp32:.2f}"]
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    right = set(range(2, len(head)))

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    out = ([f"**{title}**", ""] if title else []) + [line(head), sep] + [line(b) for b in body]
    out += ["", "× eager: against torch eager; × fp32: against onnxruntime fp32 (same device and batch)"]
    out += [f"[{i}] {note}" for i, note in enumerate(notes, start=1)]
    return "\n".join(out)


def environment() -> dict[str, object]:
    """What a benchmark number depends on besides the model: versions, cores, threads, GPU."""
    import platform

    import onnxruntime as ort

    from aperture_zoo.device import device_name

    return {
        "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
        "cpu": device_name("cpu", detail=True), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": device_name("cuda:0") if torch.cuda.is_available() else None,
    }
