"""Two facts about a torch device that training, evaluation and the benchmarks must agree on.

``autocast_dtype``: what ``precision="auto"`` means (bf16 autocast on CUDA, fp32 on CPU), so a model
is evaluated and benchmarked in the precision it was trained in; ``precision="native"`` (the fine-tune's)
trains in bf16 wherever the hardware computes it natively and is evaluated as ``auto`` is
(``eval_precision``). ``device_name``: how a device is
named in results (metadata, eval reports, benchmark rows), so one GPU is never recorded under two
names. ``inference_dtype``: the precision of passes whose outputs are only *used*, never reported
(the fine-tune's feature pass), where bf16 pays off even on a CPU.
"""

from __future__ import annotations

import platform

import torch

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "native")


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32 (no autocast).

    ``auto`` is bf16 on CUDA, where it is about twice as fast and trains as well, and fp32 on CPU,
    so that a CPU run's figures do not depend on which CPU it had. ``native`` is bf16 wherever
    ``inference_dtype`` finds it computed natively (CUDA, a CPU with AMX), else fp32: on an AMX CPU,
    bf16 autocast trains resnet10 about 1.9x faster than fp32 (2.5x with two stages frozen;
    bench/finetune_speed.py), while on a CPU without it bf16 is emulated and slower.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "native":
        return inference_dtype(device)
    cuda = torch.device(device).type == "cuda"
    return torch.bfloat16 if precision == "bf16" or (precision == "auto" and cuda) else None


def eval_precision(precision: str) -> str:
    """The precision a run of ``precision`` is evaluated in: its own, except ``native``, which is
    evaluated as ``auto`` (fp32 on any CPU), so its test figure is the one ``aperture eval`` gives."""
    return "auto" if precision == "native" else precision


def inference_dtype(device: torch.device | str) -> torch.dtype | None:
    """bf16 for a no-grad forward pass where the hardware computes it natively, else None (fp32).

    On a CPU that means AMX tiles (Intel Sapphire Rapids and later): there oneDNN's bf16 forward
    pass of resnet10 (batch 128, channels_last) runs about 1.6x faster than fp32, and bf16 autocast
    training about 1.9x (bench/finetune_speed.py measures the fine-tune's). Other CPUs were not
    measured and stay in fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type != "cpu":
        return None
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch's own probe (private, so guarded)
    try:
        return torch.bfloat16 if amx is not None and amx() and torch.backends.mkldnn.is_available() else None
    except RuntimeError:
        return None


def device_name(device: torch.device | str, detail: bool = False) -> str:
    """The GPU's product name, or ``cpu``; with ``detail`` the CPU's model and torch's thread count.

    Benchmark figures on a CPU depend on both, so benchmarks ask for the detail; results that only
    say where a model ran (training metadata, evaluation reports) keep the plain ``cpu``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu" or not detail:
        return device.type
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu ({model}, {torch.get_num_threads()} threads)"
