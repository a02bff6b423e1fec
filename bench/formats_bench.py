"""Every runtime that runs here, timed in one run beside onnxruntime and torch (issue 29's speed figures).

``aperture bench``'s ``run_benchmark`` with the files exported once, each row at batch 1 and 64, at 1 and
2 threads (torch too), the whole table ``--repeats`` times: the ratios to onnxruntime fp32 are taken
within each pass (same load), and the summary gives their median and range over the passes. Raw rows
and the machine go to ``--out`` (JSON); the Markdown summary is printed.

    nice -n 10 python bench/formats_bench.py --data-dir DIR --out bench/results/DIR/formats_bench.json
    python bench/formats_bench.py --out bench/results/DIR/formats_bench.json --table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

VARIANTS = ("torch-eager", "ort-fp32", "ort-int8", "ov-fp32", "ov-bf16", "ov-int8", "ov-onnx-int8",
            "et-fp32", "et-int8", "litert-fp32", "litert-int8")


def run(name: str, data_dir: str | None, repeats: int, min_seconds: float) -> dict:
    import aperture_zoo
    from aperture_zoo.export.bench import environment, run_benchmark

    model = aperture_zoo.load(name, pretrained=True)
    load_before = os.getloadavg()
    t0 = time.time()
    rows = run_benchmark(model, batch_sizes=(1, 64), device="cpu", variants=VARIANTS, data_dir=data_dir,
                         min_seconds=min_seconds, thread_counts=(1, 2), repeats=repeats, torch_threads=True,
                         progress=lambda m: print(f"  {m}", flush=True))
    return {"model": name, "environment": environment(), "load_before": load_before, "load_after": os.getloadavg(),
            "seconds": round(time.time() - t0), "rows": [r.to_dict() for r in rows]}


def summary(result: dict) -> str:
    rows = result["rows"]
    keys = sorted({(r["threads"], r["batch"]) for r in rows})
    lines = [f"{result['model']}, {result['environment'].get('cpu', '')}; load average {result['load_before'][0]:.1f} "
             f"before, {result['load_after'][0]:.1f} after; {max(r['repeat'] for r in rows) + 1} passes", "",
             "| threads | batch | runtime | images/s (median, range) | × onnxruntime fp32 (median, range) |",
             "|---|---|---|---|---|"]
    for threads, batch in keys:
        for variant in VARIANTS:
            got = [r for r in rows if r["variant"] == variant and r["threads"] == threads and r["batch"] == batch]
            speeds = [r["images_per_s"] for r in got if r["images_per_s"]]
            ratios = [r["ratio_to_ort_fp32"] for r in got if r["ratio_to_ort_fp32"]]
            if not speeds:
                note = next((r["note"] for r in got if r["note"]), "no figure")
                lines.append(f"| {threads} | {batch} | {variant} | — ({note[:80]}) | — |")
                continue
            ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})" if ratios else "—"
            lines.append(f"| {threads} | {batch} | {variant} | {statistics.median(speeds):,.0f} "
                         f"({min(speeds):,.0f}–{max(speeds):,.0f}) | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet22")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=1.5)
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    if not args.table:
        result = run(args.model, args.data_dir, args.repeats, args.min_seconds)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(summary(json.loads(args.out.read_text())))


if __name__ == "__main__":
    main()
