"""The demo page (onnxruntime-web in headless Chromium) against onnxruntime's Python CPU provider,
batch 1, same run, same thread count; prints, never asserts.

    python bench/browser_vs_native.py resnet22 --threads 1,2 --reps 2 [--data-dir DATA]

For each file (fp32, int8), thread count and repetition, native and browser alternate: each is
warmed up, then timed over ``--runs`` images (wall-clock best and median), and the CPU time the
process (or every Chromium process) used per image is read from /proc (Linux). On a machine
shared with other jobs the wall-clock figures swing with the load; CPU time per image swings far
less, so the ratio of CPU times is the steadier comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from aperture_zoo.browser import _chromium, check_browser_ready, write_page_models
from aperture_zoo.demo import DemoServer, web_dir
from aperture_zoo.export.runtime import create_session
from aperture_zoo.pretrained import load

TICK = os.sysconf("SC_CLK_TCK")


def _tree(root: int) -> list[int]:
    """``root`` and every process below it (Playwright's driver, then Chromium's processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack += children.get(pid, [])
    return out


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICK


def native(path: Path, threads: int, runs: int) -> dict[str, float]:
    session = create_session(path, "cpu", threads=threads)
    x = np.full((1, 3, 32, 32), 0.5, np.float32)
    name = session.get_inputs()[0].name
    start = time.perf_counter()
    while time.perf_counter() - start < 1.5:  # the same warm-up as the page's
        session.run(None, {name: x})
    times = []
    cpu0 = time.process_time()
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    cpu = (time.process_time() - cpu0) * 1e3 / runs
    return {"best": min(times), "median": statistics.median(times), "cpu": cpu}


def browser(launcher_browser: object, url: str, name: str, precision: str, threads: int, runs: int) -> dict[str, float]:
    page = launcher_browser.new_page()  # type: ignore[attr-defined]
    try:
        page.goto(f"{url}?model={name}&precision={precision}&ep=wasm&threads={threads}")
        page.wait_for_function("['ready', 'failed'].includes(window.apertureDemo?.state)", timeout=180_000)
        if page.evaluate("apertureDemo.state") != "ready" or page.evaluate("apertureDemo.threads") != threads:
            raise SystemExit(f"the page did not load {name} {precision} on {threads} thread(s): "
                             f"{page.evaluate('apertureDemo.error')}")
        page.evaluate("apertureDemo.benchmark(3)")  # the page's warm-up, outside the CPU window
        pids = _tree(os.getpid())
        cpu0 = _cpu_seconds(pids)
        r = page.evaluate("(n) => apertureDemo.benchmark(n, 600000, false)", runs)
        cpu = (_cpu_seconds(pids) - cpu0) * 1e3 / r["runs"]
    finally:
        page.close()
    return {"best": r["min_ms"], "median": r["median_ms"], "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="resnet22")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 to calibrate int8 on (else noise; speed only)")
    args = parser.parse_args()
    chromium = check_browser_ready()
    model = load(args.name, pretrained=True)
    with tempfile.TemporaryDirectory() as tmp:
        entry = write_page_models(model, Path(tmp), args.data_dir)
        with DemoServer(web_dir(), tmp, port=0) as server, _chromium(chromium) as chrome:
            for rep in range(args.reps):
                for f in entry.files or []:
                    for threads in [int(t) for t in args.threads.split(",")]:
                        n = native(Path(tmp) / f.file, threads, args.runs * 4)
                        b = browser(chrome, server.url, args.name, f.precision, threads, args.runs)
                        print(json.dumps({"rep": rep, "precision": f.precision, "threads": threads,
                                          **{f"native_{k}_ms": round(v, 2) for k, v in n.items()},
                                          **{f"browser_{k}_ms": round(v, 2) for k, v in b.items()},
                                          "cpu_ratio": round(b["cpu"] / n["cpu"], 2)}), flush=True)


if __name__ == "__main__":
    main()
