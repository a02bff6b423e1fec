"""Training throughput of each model on this machine: images/s and achieved TFLOP/s.

    python bench/train_throughput.py                      # every model, short run, this device
    python bench/train_throughput.py --models resnet22 --memory-format both --steps 5
    python bench/train_throughput.py --device cuda --compile --json

What is timed is the trainer's own step, not a re-implementation: ``augment_batch`` (crop, flip,
cutout, label smoothing on the device-resident uint8 batch) followed by ``TrainStep`` (forward,
soft-target cross-entropy, backward, the recipe's optimizer), with the recipe's precision and
memory format. Images are random uint8 kept on the device, like the real loader's, so no data set
is needed and the figures do not depend on one.

On CPU each row also says what share of the cores the process got (CPU time over wall time x
threads): on a shared machine a low share explains a low figure.

Achieved TFLOP/s = images/s x training FLOPs per image, where training FLOPs are 3 x the forward
FLOPs that ``aperture_zoo.summary.measure`` counts (backward costs about twice the forward; torch's
flop counter gives 2.99-3.00 x for these networks). Batch-norm, activation and optimizer arithmetic
is not counted, as is usual, so this is a lower bound of the work done.

These are measurements to report, never to assert: nothing in the test suite depends on them.
Defaults are short on CPU (2 warm-up + 3 timed steps per model); on CUDA they are long enough for
stable numbers (10 + 50 steps).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from aperture_zoo.model import create_model
from aperture_zoo.registry import list_models
from aperture_zoo.summary import measure
from aperture_zoo.train.augment import AugmentConfig, augment_batch
from aperture_zoo.device import autocast_dtype, device_name
from aperture_zoo.train.distributed import resolve_device
from aperture_zoo.train.step import TrainStep, build_optimizer
from aperture_zoo.train.recipes import Recipe, get_recipe

TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (grad of inputs and of weights)


@dataclass
class ThroughputRow:
    model: str
    device: str
    memory_format: str       # channels_last | nchw
    precision: str           # fp32 | bf16
    batch: int
    steps: int
    compiled: bool
    params: int
    train_gflop_per_image: float
    seconds: float
    ms_per_step: float
    images_per_s: float
    tflops: float            # achieved, from the counted FLOPs
    threads: int             # torch CPU threads
    cpu_share: float | None  # CPU only: this process's CPU time / (wall x threads); < 1: cores were shared


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_training(
    name: str,
    device: torch.device,
    recipe: Recipe,
    batch_size: int,
    steps: int,
    warmup: int,
    channels_last: bool,
    bf16: bool,
    compile_model: bool = False,
    pool_size: int | None = None,
    seed: int = 0,
) -> ThroughputRow:
    """Time ``steps`` training steps of ``name`` after ``warmup`` untimed ones (cuDNN autotuning, compile)."""
    torch.manual_seed(seed)
    model = create_model(name).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(model, recipe, device)
    net: torch.nn.Module = torch.compile(model) if compile_model else model
    step_fn = TrainStep(net, optimizer, torch.bfloat16 if bf16 else None)
    spec = model.spec
    mean = torch.tensor(spec.mean, device=device)
    std = torch.tensor(spec.std, device=device)
    aug = AugmentConfig.from_recipe(recipe)

    # A device-resident uint8 pool the batches are gathered from at random, as the loader does.
    n = pool_size or max(4 * batch_size, 1024)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    images = torch.randint(0, 256, (n, *spec.input_size), dtype=torch.uint8, device=device, generator=gen)
    labels = torch.randint(0, spec.num_classes, (n,), device=device, generator=gen)

    def one_step() -> None:
        idx = torch.randint(0, n, (batch_size,), device=device, generator=gen)
        batch = augment_batch(images[idx], labels[idx], aug, mean, std, spec.num_classes, gen,
                              channels_last=channels_last)
        step_fn(batch)

    for _ in range(warmup):
        one_step()
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        one_step()
    _sync(device)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start

    facts = measure(name)
    train_flops = TRAIN_FLOPS_PER_FORWARD * facts["flops"]
    ips = steps * batch_size / seconds
    return ThroughputRow(
        model=name, device=device_name(device, detail=True), memory_format="channels_last" if channels_last else "nchw",
        precision="bf16" if bf16 else "fp32", batch=batch_size, steps=steps, compiled=compile_model,
        params=facts["params"], train_gflop_per_image=train_flops / 1e9, seconds=seconds,
        ms_per_step=1000 * seconds / steps, images_per_s=ips, tflops=ips * train_flops / 1e12,
        threads=torch.get_num_threads(),
        cpu_share=None if device.type == "cuda" else cpu_seconds / (seconds * torch.get_num_threads()),
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None, help="model names (default: every registered model)")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--batch-size", type=int, default=None, help="default: 64 on CPU, 512 on CUDA")
    p.add_argument("--steps", type=int, default=None, help="timed steps per model (default: 3 CPU, 50 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 2 CPU, 10 CUDA)")
    p.add_argument("--memory-format", choices=("channels_last", "nchw", "both"), default="channels_last")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 autocast on CUDA, fp32 on CPU (what training uses)")
    p.add_argument("--recipe", default="fast", help="recipe whose optimizer and augmentation are timed")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up covers compiling)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def run(argv: list[str] | None = None, echo: bool = False) -> dict[str, Any]:
    """Parse ``argv``, measure, and return ``{"device", "torch", ..., "rows": [...]}``.

    With ``echo``, a header and each model's line are printed as soon as they are measured.
    """
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch_size or (512 if cuda else 64)
    steps = args.steps if args.steps is not None else (50 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    if steps < 1 or batch < 1 or warmup < 0:
        raise SystemExit("--steps and --batch-size must be >= 1, --warmup >= 0")
    bf16 = autocast_dtype(args.precision, device) is not None
    formats = {"channels_last": [True], "nchw": [False], "both": [True, False]}[args.memory_format]
    recipe = get_recipe(args.recipe)
    if cuda:
        torch.backends.cudnn.benchmark = True
    info = {"device": device_name(device, detail=True), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "recipe": recipe.name}
    if echo:
        print(f"device: {info['device']}, torch {info['torch']}, python {info['python']}, recipe {recipe.name}")
    rows = []
    for name in args.models or list_models():
        for channels_last in formats:
            row = measure_training(name, device, recipe, batch, steps, warmup, channels_last, bf16, args.compile)
            rows.append(row)
            if echo:
                print(_format_row(row), flush=True)
    return {**info, "rows": [asdict(r) for r in rows]}


def _format_row(r: ThroughputRow) -> str:
    return (f"{r.model:<9} {r.memory_format:<13} {r.precision:<4} batch {r.batch:<4} "
            f"{r.images_per_s:>10,.1f} img/s  {r.tflops:>8.4f} TFLOP/s  {r.ms_per_step:>9.1f} ms/step  "
            f"({r.train_gflop_per_image:.2f} GFLOP/img, {r.steps} steps{', compiled' if r.compiled else ''}"
            + (f", got {100 * r.cpu_share:.0f}% of {r.threads} threads" if r.cpu_share is not None else "") + ")")


def main(argv: list[str] | None = None) -> int:
    as_json = _parser().parse_args(argv).json
    result = run(argv, echo=not as_json)
    if as_json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
