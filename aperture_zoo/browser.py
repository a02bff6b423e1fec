"""The browser demo as a benchmark: headless Chromium runs the page, and its timings become bench rows.

``aperture bench NAME --variants browser-wasm,browser-webgpu`` measures what a visitor of the demo
gets: the same page (apps/web), the same onnxruntime-web, served by the same ``DemoServer``, driven
through Playwright with the Chromium already installed on the machine (nothing is downloaded).
The page's own ``apertureDemo.benchmark(n)`` times ``session.run`` at batch 1 after its warm-up,
so the rows sit beside ``ort-fp32`` / ``ort-int8`` at the same thread count.

Kept apart from export/bench.py: this drives a browser and a server, the table code does neither.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .demo import DemoError, DemoFile, DemoModel, DemoServer, check_web_runtime, web_dir, write_manifest
from .export.bench import BenchRow

BROWSER_VARIANTS: tuple[str, ...] = ("browser-wasm", "browser-webgpu")
PRECISIONS: tuple[str, ...] = ("fp32", "int8")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
INSTALL = ("the browser-* variants need Chromium and Playwright: `apt-get install chromium` (or set "
           "APERTURE_CHROMIUM to a Chrome/Chromium binary) and `pip install playwright` (the `browser` extra), plus the page's "
           "runtime: `npm ci --prefix apps/web`")
# Linux Chromium hides WebGPU behind these; a machine without a GPU still has no adapter.
WEBGPU_FLAGS = ("--enable-unsafe-webgpu", "--enable-features=Vulkan")
NO_ADAPTER = "no WebGPU adapter in this browser (no GPU, or WebGPU disabled): nothing measured"


class BrowserError(DemoError):
    """A browser benchmark cannot run here (no Chromium, no Playwright, a page that fails)."""


@dataclass
class PageTiming:
    """What the page's ``benchmark(n)`` measured for one model file."""

    variant: str
    precision: str
    ep: str | None          # the backend the page really used
    threads: int | None
    median_ms: float | None
    min_ms: float | None
    runs: int
    note: str = ""


def split_variants(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the bench table's own variants, the browser ones), in the order given."""
    browser = [n for n in names if n in BROWSER_VARIANTS]
    return [n for n in names if n not in BROWSER_VARIANTS], browser


def find_chromium() -> str:
    """A Chromium binary to drive (``APERTURE_CHROMIUM`` first), or a one-line error saying how to get one."""
    asked = os.environ.get("APERTURE_CHROMIUM")
    if asked:
        if not Path(asked).is_file():
            raise BrowserError(f"APERTURE_CHROMIUM={asked} is not a file; {INSTALL}")
        return asked
    path = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if not path:
        raise BrowserError(f"no Chromium found; {INSTALL}")
    return path


def check_browser_ready() -> str:
    """Everything a browser row needs, checked before any work; the Chromium path."""
    chromium = find_chromium()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise BrowserError(f"playwright is not installed; {INSTALL}") from None
    check_web_runtime(web_dir())
    return chromium


def write_page_models(model: Any, out: Path, data_dir: str | os.PathLike[str] | None = None,
                      exporter: str = "dynamo") -> DemoModel:
    """fp32 and int8 files of ``model`` in ``out`` with the page's ``models.json`` (no validation: speed only).

    int8 is calibrated on ``data_dir``'s training images when given, else on noise, as the bench's
    ``ort-int8`` is, so both sides time the same kind of file.
    """
    from .export.onnx_export import to_onnx
    from .export.quantize import DEFAULT_CALIBRATION_IMAGES, calibration_pixels, to_int8

    name = model.spec.name
    fp32 = to_onnx(model, out / f"{name}.onnx", exporter=exporter)  # type: ignore[arg-type]
    if data_dir is not None:
        calib = calibration_pixels(data_dir, DEFAULT_CALIBRATION_IMAGES)
    else:
        calib = np.random.default_rng(0).random((256, *model.spec.input_size), dtype=np.float32)
    int8 = to_int8(fp32, out / f"{name}.int8.onnx", calib)
    files = [DemoFile(p, f.name, f.stat().st_size) for p, f in (("fp32", fp32), ("int8", int8))]
    entry = DemoModel(name=name, params=sum(p.numel() for p in model.parameters()), available=True,
                      file=fp32.name, bytes=fp32.stat().st_size, labels=list(model.spec.label_names),
                      input_size=list(model.spec.input_size), files=files, precision="fp32")
    write_manifest(out, [entry])
    return entry


@contextmanager
def _chromium(chromium: str, args: Sequence[str] = (), launcher: Any = None) -> Iterator[Any]:
    """A headless Chromium; ``launcher``: a running Playwright's ``chromium`` (one Playwright per thread)."""
    if launcher is None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw, _chromium(chromium, args, pw.chromium) as browser:
            yield browser
        return
    browser = launcher.launch(executable_path=chromium, headless=True, args=list(args))
    try:
        yield browser
    finally:
        browser.close()


def time_page(url: str, name: str, variant: str, precision: str, threads: int | None, runs: int,
              chromium: str, timeout_s: float = 180, launcher: Any = None) -> PageTiming:
    """Open the demo at ``url`` on one model file and run its benchmark; a failure is a row's note."""
    ep = variant.removeprefix("browser-")
    query = f"?model={name}&precision={precision}&ep={ep}" + (f"&threads={threads}" if threads else "")
    with _chromium(chromium, WEBGPU_FLAGS if ep == "webgpu" else (), launcher) as browser:
        page = browser.new_page()
        page.goto(url + query)
        page.wait_for_function("['ready', 'failed', 'error'].includes(window.apertureDemo?.state)",
                               timeout=timeout_s * 1000)
        state = page.evaluate("({state: apertureDemo.state, error: apertureDemo.error, ep: apertureDemo.ep,"
                              " precision: apertureDemo.precision})")
        if state["state"] != "ready":
            return PageTiming(variant, precision, None, threads, None, None, 0, f"failed: {state['error']}")
        if state["precision"] != precision:
            return PageTiming(variant, precision, state["ep"], threads, None, None, 0,
                              f"failed: the page loaded {state['precision']}, not {precision}")
        if ep == "webgpu" and state["ep"] != "webgpu":
            return PageTiming(variant, precision, state["ep"], None, None, None, 0, NO_ADAPTER)
        r = page.evaluate("(n) => apertureDemo.benchmark(n)", runs)
    notes = [r["note"]] if r.get("note") else []
    adapter = r.get("adapter") or {}
    if adapter:
        what = " ".join(filter(None, [adapter.get("vendor"), adapter.get("architecture")])) or "unnamed"
        software = adapter.get("fallback") or "swiftshader" in what.lower()
        notes.append(f"adapter {what}" + (" (software, not a GPU)" if software else ""))
    return PageTiming(variant, precision, r["ep"], r["threads"], r["median_ms"], r["min_ms"], r["runs"],
                      "; ".join(notes))


def browser_rows(
    model: Any,
    variants: Sequence[str],
    *,
    threads: int | None = 1,
    runs: int = 50,
    data_dir: str | os.PathLike[str] | None = None,
    exporter: str = "dynamo",
    progress: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    """Batch-1 rows for each browser variant and precision (fp32, int8): the page's median ``session.run``."""
    say = progress or (lambda _m: None)
    chromium = check_browser_ready()
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="aperture_browser_") as tmp:
        say("exporting ONNX files for the page")
        entry = write_page_models(model, Path(tmp), data_dir, exporter)
        with DemoServer(web_dir(), tmp, port=0) as server:
            for variant in variants:
                for precision in PRECISIONS:
                    say(f"{variant} {precision} in headless Chromium")
                    t = time_page(server.url, entry.name, variant, precision, threads, runs, chromium)
                    note = "; ".join(filter(None, [precision, f"best {t.min_ms:.2f} ms" if t.min_ms else "", t.note]))
                    rows.append(BenchRow(variant=f"{variant}-{precision}", device="gpu" if variant == "browser-webgpu" else "cpu",
                                         batch=1, images_per_s=1e3 / t.median_ms if t.median_ms else None,
                                         ms_per_batch=t.median_ms, note=note, threads=t.threads))
    return rows


def add_native_ratios(rows: list[BenchRow]) -> list[BenchRow]:
    """Each browser row's time as a multiple of the native ``ort-<precision>`` row at batch 1, CPU, same threads."""
    native = {(r.variant, r.threads): r.ms_per_batch for r in rows if r.batch == 1 and r.device == "cpu"}
    for r in rows:
        if not r.variant.startswith("browser-") or r.ms_per_batch is None:
            continue
        precision = r.variant.rsplit("-", 1)[1]
        base = native.get((f"ort-{precision}", r.threads))
        if base:
            r.note += f"; {r.ms_per_batch / base:.1f}× ort-{precision} time"
    return rows
