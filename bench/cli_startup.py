"""How long `aperture --help` takes (the target: well under 2 s); prints, never asserts.

    python bench/cli_startup.py [--runs 5]

The tests check the cause instead (no torch/onnx/huggingface_hub import behind --help); this
script measures the effect on the current machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def measure(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "aperture_zoo", *argv], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = {" ".join(a): measure(a, args.runs) for a in (["--help"], ["train", "--help"])}
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for command, times in rows.items():
        print(f"aperture {command:<14} best {min(times):.3f} s  median {statistics.median(times):.3f} s  "
              f"({args.runs} runs)")


if __name__ == "__main__":
    main()
