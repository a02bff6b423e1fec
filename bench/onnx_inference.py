#!/usr/bin/env python
"""Inference throughput of one zoo model: torch eager / channels_last / torch.compile and
onnxruntime fp32 / fp16 / int8, at batch 1 and 256, on CPU and (when present) CUDA.

A thin wrapper over ``aperture_zoo.export.bench`` (the same code as ``aperture bench``) that also
records the environment, for baselines::

    python bench/onnx_inference.py resnet22                      # random weights, Markdown table
    python bench/onnx_inference.py resnet22 --variants torch-eager,ort-fp32,ort-int8
    python bench/onnx_inference.py resnet22 --data-dir ~/data --json > bench.json

Speed does not depend on the weights, so random ones (seed 0) are the default; int8 is calibrated
on CIFAR-10 training images when ``--data-dir`` is given, else on noise (speed only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="model name, e.g. resnet22")
    parser.add_argument("--weights", type=Path, help="a model.safetensors (default: random weights, seed 0)")
    parser.add_argument("--batch-sizes", default="1,256", help="comma-separated (default 1,256)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (CPU, plus CUDA when present)")
    parser.add_argument("--variants", default="all",
                        help="comma-separated subset of torch-eager, torch-channels-last, torch-compile, ort-fp32, "
                        "ort-fp16, ort-int8; or 'all'")
    parser.add_argument("--data-dir", type=Path, help="CIFAR-10 folder, for int8 calibration")
    parser.add_argument("--exporter", default="dynamo", choices=["dynamo", "legacy"])
    parser.add_argument("--min-seconds", type=float, default=2.0, help="timing window per measurement")
    parser.add_argument("--json", action="store_true", help="print {model, environment, rows} as JSON")
    args = parser.parse_args(argv)

    import torch

    from aperture_zoo.errors import ApertureError
    from aperture_zoo.export.bench import environment, format_table, parse_batch_sizes, parse_variants, run_benchmark
    from aperture_zoo.model import create_model
    from aperture_zoo.weights import load_weights

    try:
        sizes, variants = parse_batch_sizes(args.batch_sizes), parse_variants(args.variants)
        torch.manual_seed(0)
        model = create_model(args.name).eval()
        if args.weights is not None:
            load_weights(model, args.weights)
        rows = run_benchmark(model, batch_sizes=sizes, device=args.device, variants=variants,
                             data_dir=args.data_dir, exporter=args.exporter, min_seconds=args.min_seconds,
                             progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    except ApertureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    weights = str(args.weights) if args.weights else "random (seed 0)"
    if args.json:
        print(json.dumps({"model": args.name, "weights": weights, "environment": environment(),
                          "rows": [r.to_dict() for r in rows]}, indent=2))
    else:
        env = environment()
        print(format_table(rows, title=f"{args.name}, {weights} weights: images/s"))
        print(f"\ntorch {env['torch']}, onnxruntime {env['onnxruntime']}, {env['cpu_count']} CPU cores "
              f"({env['torch_threads']} torch threads), GPU: {env['cuda_device'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
