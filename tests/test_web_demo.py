"""The browser demo (apps/web): the page in headless Chromium against OnnxClassifier, and its server.

The page must compute what ``aperture predict`` computes: the same 32x32 pixels (bit for bit) and
the same probabilities (within 1e-4) for the same files. One Chromium page serves every browser
test of the module; a random-weights resnet10 with a spread-out head stands in for trained
weights, so no download or published weights are needed.

The browser tests skip when Chromium or onnxruntime-web is missing, except under CI (``CI`` set),
where .ci/run installs both and a skip would hide a broken setup.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from aperture_zoo import UnknownModelError, browser, demo
from aperture_zoo.cli import app
from aperture_zoo.demo import DemoError, DemoFile, DemoModel, DemoServer
from aperture_zoo.export.predict import OnnxClassifier, load_image, resize_bilinear
from aperture_zoo.model import create_model
from cifar_synth import write_cifar10

REPO = Path(__file__).resolve().parent.parent
WEB = REPO / "apps" / "web"
ARTIFACTS = Path(os.environ.get("APERTURE_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))
CHROMIUM_NAMES = ("chromium", "chromium-browser")


def _unavailable(reason: str) -> None:
    """Skip for a missing tool, except under CI, which must run every test here."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run this test (.ci/run installs Chromium and onnxruntime-web)")
    pytest.skip(f"{reason}; skipped")


def _chromium() -> str:
    path = os.environ.get("APERTURE_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if not path:
        _unavailable("Chromium is not installed (apt-get install chromium)")
    return str(path)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_model("resnet10").eval()
    with torch.no_grad():  # a spread-out head: probabilities far from uniform, so 1e-4 means something
        net.fc.weight.normal_(0, 0.5)
    net.temperature = 1.25  # calibrated files: the page must show softmax(logits / T), not softmax(logits)
    return net


@pytest.fixture(scope="module")
def models_dir(network: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("web-models")
    data = write_cifar10(tmp_path_factory.mktemp("cifar"), n_train_per_class=20, n_test_per_class=2)
    entry = demo.export_for_demo(network, out, validate=False, exporter="legacy", data_dir=data)
    assert [f.precision for f in entry.files or []] == ["fp32", "fp16", "int8", "fp32-flip"] and entry.precision == "fp32"
    assert [f.tta for f in entry.files or []] == [False, False, False, True]
    assert all(f.temperature == 1.25 for f in entry.files or [])
    # what the page shows for a model without published weights, and for a file that does not load
    absent = DemoModel(name="resnet24", params=4_935_242, available=False, reason=demo.NO_WEIGHTS)
    (out / "resnet20.onnx").write_bytes(b"not an onnx file")
    broken = DemoModel(name="resnet20", params=1, available=True, file="resnet20.onnx", bytes=16,
                       labels=entry.labels, input_size=entry.input_size,
                       files=[DemoFile("fp32", "resnet20.onnx", 16)], precision="fp32")
    demo.write_manifest(out, [entry, broken, absent])
    return out


@pytest.fixture(scope="module")
def classifier(models_dir: Path) -> OnnxClassifier:
    return OnnxClassifier(models_dir / "resnet10.onnx", provider="cpu")


@pytest.fixture(scope="module")
def server(models_dir: Path) -> Iterator[DemoServer]:
    with DemoServer(WEB, models_dir, port=0) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser_type() -> Iterator[Any]:
    """Playwright's Chromium launcher, set up to start Debian's Chromium (nothing is downloaded)."""
    _chromium()
    try:
        demo.check_web_runtime(WEB)
    except DemoError as exc:
        _unavailable(str(exc))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        yield pw.chromium


@pytest.fixture(scope="module")
def page(browser_type: Any, server: DemoServer) -> Iterator[Any]:
    errors: list[str] = []
    browser = browser_type.launch(executable_path=_chromium(), headless=True)
    try:
        pg = browser.new_page(viewport={"width": 1100, "height": 720})
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.goto(f"{server.url}?model=resnet10&ep=wasm&precision=fp32&threads=2")
        pg.wait_for_function("['ready', 'failed'].includes(window.apertureDemo?.state)", timeout=120_000)
        assert pg.evaluate("window.apertureDemo.state") == "ready", pg.evaluate("window.apertureDemo.error")
        yield pg
    finally:
        browser.close()
    assert not errors, f"uncaught errors on the page: {errors}"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real CIFAR-10 test images from the gallery, in the shapes and modes people upload."""
    folder = tmp_path_factory.mktemp("web-images")
    dog = Image.open(WEB / "gallery" / "dog_1.png")
    ship = Image.open(WEB / "gallery" / "ship_2.png")
    frog = Image.open(WEB / "gallery" / "frog_1.png")
    files = {
        "wide": (dog.resize((97, 61), Image.Resampling.BICUBIC), "wide.png"),           # non-square, downscaled
        "tall": (ship.resize((40, 150), Image.Resampling.BICUBIC), "tall.png"),         # height shrinks most
        "grey": (frog.convert("L").resize((64, 48), Image.Resampling.BICUBIC), "grey.png"),
        "small": (dog.resize((20, 13), Image.Resampling.BICUBIC), "small.png"),         # upscaled
        "jpeg": (ship.resize((80, 80), Image.Resampling.BICUBIC), "photo.jpg"),
        "palette": (Image.open(WEB / "gallery" / "horse_1.png").quantize(64), "palette.png"),  # mode P
    }
    out = {}
    for key, (img, name) in files.items():
        img.save(folder / name, quality=90) if name.endswith(".jpg") else img.save(folder / name)
        out[key] = folder / name
    rgba = np.asarray(frog.convert("RGBA")).copy()
    rgba[..., 3] = np.linspace(0, 255, 32, dtype=np.uint8)[None, :]  # translucent, colour kept under alpha 0
    Image.fromarray(rgba, "RGBA").save(folder / "translucent.png")
    out["translucent"] = folder / "translucent.png"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view": browsers and load_image both turn it upright
    dog.resize((48, 36)).save(folder / "rotated.jpg", quality=95, exif=exif.tobytes())
    out["rotated"] = folder / "rotated.jpg"
    (folder / "notes.txt").write_text("not an image\n")
    out["text"] = folder / "notes.txt"
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
    out["broken"] = folder / "broken.png"
    return out


def _upload(page: Any, path: Path) -> dict[str, Any]:
    """Give the page a file through its file input; the state it ends in and its last result."""
    before = page.evaluate("window.apertureDemo.runs + window.apertureDemo.errors")
    page.set_input_files("#file", str(path))
    page.wait_for_function(f"window.apertureDemo.runs + window.apertureDemo.errors > {before}", timeout=60_000)
    return page.evaluate("({state: window.apertureDemo.state, last: window.apertureDemo.last, error: window.apertureDemo.error})")


def _assert_same_as_python(result: dict[str, Any], path: Path, classifier: OnnxClassifier) -> None:
    pixels, _ = load_image(path)
    page_pixels = np.asarray(result["pixels"], dtype=np.uint8).reshape(32, 32, 3)
    np.testing.assert_array_equal(page_pixels, pixels, err_msg=f"{path.name}: the page's 32x32 input differs")
    want = classifier.predict_proba(pixels)[0]
    got = np.asarray(result["probs"])
    assert int(np.argmax(got)) == int(np.argmax(want)), path.name
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=path.name)
    pred = classifier.predict(path, top_k=3)[0]
    assert [t["label"] for t in result["top"]] == [label for label, _ in pred.top]


# ---------------------------------------------------------------- the page


def test_page_lists_the_zoo_and_says_which_models_have_no_weights(page: Any) -> None:
    options = page.eval_on_selector_all("#model option", "els => els.map(e => [e.value, e.disabled, e.textContent])")
    assert [(v, d) for v, d, _ in options] == [("resnet10", False), ("resnet20", False), ("resnet24", True)]
    assert "no published weights" in options[2][2]
    assert "resnet24" in page.inner_text("#unavailable")
    assert "WebAssembly" in page.inner_text("#runtime")


@pytest.mark.parametrize("key", ["wide", "tall", "grey", "small", "jpeg", "palette", "translucent", "rotated"])
def test_page_matches_onnx_classifier(page: Any, images: dict[str, Path], classifier: OnnxClassifier, key: str) -> None:
    result = _upload(page, images[key])
    assert result["state"] == "done", result["error"]
    _assert_same_as_python(result["last"], images[key], classifier)
    shown = page.eval_on_selector_all("#top li", "els => els.map(e => e.dataset.label)")
    assert shown == [t["label"] for t in result["last"]["top"]]
    assert "ms" in page.inner_text("#timing")


def test_the_comparisons_are_not_vacuous(images: dict[str, Path], classifier: OnnxClassifier) -> None:
    # a 1e-4 agreement means something only if the images get clearly different, peaked answers
    keys = ("wide", "tall", "grey", "small", "jpeg", "palette", "translucent", "rotated")
    probs = classifier.predict_proba(np.stack([load_image(images[k])[0] for k in keys]))
    assert probs.max(axis=1).min() > 0.2
    spread = np.abs(probs[:, None, :] - probs[None, :, :]).max(axis=2)
    pairs = spread[~np.eye(len(keys), dtype=bool)]
    assert pairs.min() > 5e-4 and np.median(pairs) > 1e-2  # the tolerance is 1e-4


def test_gallery_click_matches_onnx_classifier(page: Any, classifier: OnnxClassifier) -> None:
    before = page.evaluate("window.apertureDemo.runs")
    page.click("#gallery button[data-file='cat_1.png']")
    page.wait_for_function(f"window.apertureDemo.runs > {before}", timeout=60_000)
    result = page.evaluate("window.apertureDemo.last")
    assert result["source"] == "gallery/cat_1.png"
    _assert_same_as_python(result, WEB / "gallery" / "cat_1.png", classifier)
    assert "true label: cat" in page.inner_text("#source")


def test_flip_tta_file_in_the_page_gives_the_same_calibrated_probabilities(page: Any, images: dict[str, Path],
                                                                          models_dir: Path) -> None:
    """The same image through the page's fp32-flip file and Python's OnnxClassifier of that file: 1e-4."""
    flip = OnnxClassifier(models_dir / "resnet10.tta.onnx", provider="cpu")
    page.evaluate("apertureDemo.selectModel('resnet10', 'fp32-flip')")
    page.wait_for_function("apertureDemo.state !== 'loading' && apertureDemo.precision === 'fp32-flip'", timeout=60_000)
    try:
        result = _upload(page, images["wide"])
        assert result["state"] == "done", result["error"]
        assert result["last"]["tta"] and "flip TTA" in page.inner_text("#source")
        assert "calibrated (temperature 1.25)" in page.inner_text("#source")
        _assert_same_as_python(result["last"], images["wide"], flip)
        plain = OnnxClassifier(models_dir / "resnet10.onnx", provider="cpu")
        assert np.abs(plain.predict_proba(load_image(images["wide"])[0]) - np.asarray(result["last"]["probs"])).max() > 1e-3
    finally:
        page.evaluate("apertureDemo.selectModel('resnet10', 'fp32')")  # the other tests use fp32
        page.wait_for_function("apertureDemo.state !== 'loading' && apertureDemo.precision === 'fp32'", timeout=60_000)


@pytest.mark.parametrize("key", ["text", "broken"])
def test_a_file_that_is_not_an_image_is_a_message(page: Any, images: dict[str, Path], classifier: OnnxClassifier, key: str) -> None:
    result = _upload(page, images[key])
    assert result["state"] == "error"
    message = page.inner_text("#message")
    assert page.is_visible("#message") and images[key].name in message and "not an image" in message
    # the page still works afterwards
    ok = _upload(page, images["wide"])
    assert ok["state"] == "done" and not page.is_visible("#message")
    _assert_same_as_python(ok["last"], images["wide"], classifier)


def test_screenshot(page: Any) -> None:
    page.click("#gallery button[data-file='ship_1.png']")
    page.wait_for_function("window.apertureDemo.last?.source === 'gallery/ship_1.png'", timeout=60_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "web-demo.png"
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as img:
        assert img.size[0] >= 1000 and img.size[1] >= 500
    print(f"screenshot: {shot}")


WEBGPU_FLAGS = ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-webgpu-adapter=swiftshader"]


@pytest.mark.slow  # ~15 s: the software WebGPU adapter takes ~1.6 s a run
def test_webgpu_path_matches_onnx_classifier(browser_type: Any, server: DemoServer, images: dict[str, Path],
                                             classifier: OnnxClassifier) -> None:
    """The WebGPU execution provider, on Chromium's software adapter (SwiftShader) where it has one."""
    browser = browser_type.launch(executable_path=_chromium(), headless=True, args=WEBGPU_FLAGS)
    try:
        gpu_page = browser.new_page()
        gpu_page.goto(f"{server.url}?model=resnet10&ep=webgpu")
        gpu_page.wait_for_function("['ready', 'failed'].includes(window.apertureDemo?.state)", timeout=120_000)
        if gpu_page.evaluate("window.apertureDemo.ep") != "webgpu":
            assert "WebGPU" in gpu_page.inner_text("#runtime")  # the page says why it uses WebAssembly
            pytest.skip("this Chromium offers no WebGPU adapter, not even a software one")
        assert "WebGPU" in gpu_page.inner_text("#runtime")
        for key in ("wide",):  # one image: ~1.6 s a run on the software adapter (the rest run on WebAssembly)
            result = _upload(gpu_page, images[key])
            assert result["state"] == "done" and result["last"]["ep"] == "webgpu", result["error"]
            _assert_same_as_python(result["last"], images[key], classifier)
    finally:
        browser.close()


def test_page_is_isolated_and_runs_the_threaded_simd_backend(page: Any) -> None:
    state = page.evaluate("""() => ({isolated: self.crossOriginIsolated, sab: typeof SharedArrayBuffer,
        threads: apertureDemo.threads, ep: apertureDemo.ep,
        files: performance.getEntriesByType('resource').map(e => e.name.split('/').pop())})""")
    assert state["isolated"] is True and state["sab"] == "function"
    assert state["ep"] == "wasm" and state["threads"] == 2
    assert "ort-wasm-simd-threaded.wasm" in state["files"]  # SIMD + threads build, not the asyncify/jsep ones
    assert not [f for f in state["files"] if f.endswith(".wasm") and f != "ort-wasm-simd-threaded.wasm"]
    assert "WebAssembly, 2 threads" in page.inner_text("#runtime") and "single-threaded" not in page.inner_text("#runtime")


def test_page_shows_burst_latency_and_stages(page: Any) -> None:
    page.click("#gallery button[data-file='dog_1.png']")
    page.wait_for_function("window.apertureDemo.last?.source === 'gallery/dog_1.png'", timeout=60_000)
    last = page.evaluate("window.apertureDemo.last")
    assert last["runs"] >= 5 and 0 < last["best_ms"] <= last["median_ms"]
    assert set(last["stages"]) == {"decode", "preprocess", "inference", "postprocess"}
    timing = page.inner_text("#timing")
    assert "best" in timing and "median" in timing and "fp32" in timing and "2 threads" in timing


def test_int8_in_the_page_gives_python_int8_top1_on_the_test_images(page: Any, models_dir: Path) -> None:
    int8 = OnnxClassifier(models_dir / "resnet10.int8.onnx", provider="cpu")
    page.evaluate("apertureDemo.selectModel('resnet10', 'int8')")
    page.wait_for_function("apertureDemo.state !== 'loading' && apertureDemo.precision === 'int8'", timeout=60_000)
    assert "int8" in page.inner_text("#precision") and page.eval_on_selector("#precision", "e => e.value") == "int8"
    files = sorted(p.name for p in (WEB / "gallery").glob("*.png"))
    got = page.evaluate("""async (files) => {
        const out = [];
        for (const f of files) {
            const blob = await (await fetch('gallery/' + f)).blob();
            const r = await apertureDemo.classify(blob, f);
            out.push([r.precision, r.probs]);
        }
        return out; }""", files)
    page.evaluate("apertureDemo.selectModel('resnet10', 'fp32')")  # the other tests use fp32
    page.wait_for_function("apertureDemo.state !== 'loading' && apertureDemo.precision === 'fp32'", timeout=60_000)
    want = int8.predict_proba(np.stack([load_image(WEB / "gallery" / f)[0] for f in files]))
    assert all(p == "int8" for p, _ in got)
    probs = np.asarray([p for _, p in got])
    np.testing.assert_array_equal(probs.argmax(axis=1), want.argmax(axis=1))
    np.testing.assert_allclose(probs, want, atol=2e-3)
    fp32 = OnnxClassifier(models_dir / "resnet10.onnx", provider="cpu")
    assert np.abs(fp32.predict_proba(np.stack([load_image(WEB / "gallery" / f)[0] for f in files])) - want).max() > 1e-4


def test_a_model_file_that_fails_to_load_is_a_message_and_the_others_still_work(page: Any, images: dict[str, Path],
                                                                               classifier: OnnxClassifier) -> None:
    page.evaluate("apertureDemo.selectModel('resnet20')")
    page.wait_for_function("apertureDemo.state === 'error'", timeout=60_000)
    message = page.inner_text("#message")
    assert "resnet20" in message and "could not be loaded" in message
    assert page.evaluate("apertureDemo.model") == "resnet10" and page.eval_on_selector("#model", "e => e.value") == "resnet10"
    ok = _upload(page, images["wide"])
    assert ok["state"] == "done" and ok["last"]["model"] == "resnet10"
    _assert_same_as_python(ok["last"], images["wide"], classifier)


def test_a_file_exported_with_fp16_io_runs_in_the_page(browser_type: Any, models_dir: Path, images: dict[str, Path],
                                                       tmp_path: Path) -> None:
    """`aperture demo --onnx` offers a --fp16-io file: the page feeds it the float16 input it declares, reads its output."""
    from aperture_zoo.export.quantize import to_fp16

    mine = to_fp16(models_dir / "resnet10.onnx", tmp_path / "mine.fp16.onnx", keep_io_types=False)
    (entry,) = demo.add_onnx_files(tmp_path / "models", [mine])
    demo.write_manifest(tmp_path / "models", [entry])
    clf = OnnxClassifier(mine, provider="cpu")
    with DemoServer(WEB, tmp_path / "models", port=0) as srv:
        browser = browser_type.launch(executable_path=_chromium(), headless=True)
        try:
            pg = browser.new_page()
            pg.goto(f"{srv.url}?model={entry.name}&ep=wasm&threads=1")
            pg.wait_for_function("['ready', 'failed', 'error'].includes(window.apertureDemo?.state)", timeout=120_000)
            assert pg.evaluate("apertureDemo.state") == "ready", pg.evaluate("apertureDemo.error")
            result = _upload(pg, images["wide"])
        finally:
            browser.close()
    assert result["state"] == "done", result["error"]
    want = clf.predict_proba(load_image(images["wide"])[0])[0]
    got = np.asarray(result["last"]["probs"])
    assert int(np.argmax(got)) == int(np.argmax(want))
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert np.isfinite(result["last"]["logits"]).all() and abs(got.sum() - 1) < 1e-2


def test_page_without_isolation_works_single_threaded_and_says_so(browser_type: Any, server: DemoServer,
                                                                  images: dict[str, Path], classifier: OnnxClassifier) -> None:
    """A server without COOP/COEP headers: no SharedArrayBuffer, so one thread, and the page says why."""
    def strip(route: Any) -> None:
        response = route.fetch()
        headers = {k: v for k, v in response.headers.items() if not k.lower().startswith("cross-origin")}
        route.fulfill(response=response, headers=headers)

    browser = browser_type.launch(executable_path=_chromium(), headless=True)
    try:
        pg = browser.new_page()
        pg.route("**/*", strip)
        pg.goto(f"{server.url}?model=resnet10&ep=wasm&precision=fp32&threads=2")
        pg.wait_for_function("['ready', 'failed'].includes(window.apertureDemo?.state)", timeout=120_000)
        assert pg.evaluate("self.crossOriginIsolated") is False
        assert pg.evaluate("apertureDemo.threads") == 1
        runtime = pg.inner_text("#runtime")
        assert "1 thread" in runtime and "single-threaded, slower" in runtime and "aperture demo" in runtime
        result = _upload(pg, images["grey"])
        assert result["state"] == "done", result["error"]
        _assert_same_as_python(result["last"], images["grey"], classifier)
        # opened as a file, the page says it must be served
        pg.unroute("**/*")
        pg.goto((WEB / "index.html").as_uri())
        assert "must be served" in pg.inner_text("#message") and "aperture demo" in pg.inner_text("#message")
    finally:
        browser.close()


def test_bench_times_the_page_and_says_when_there_is_no_webgpu(browser_type: Any, server: DemoServer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    chromium = browser.check_browser_ready()
    wasm = browser.time_page(server.url, "resnet10", "browser-wasm", "int8", 1, 3, chromium, launcher=browser_type)
    assert wasm.ep == "wasm" and wasm.threads == 1 and wasm.runs == 3, wasm.note
    assert wasm.min_ms is not None and wasm.median_ms is not None and 0 < wasm.min_ms <= wasm.median_ms
    # a browser without an adapter, for certain (this Chromium has a software one, which takes ~1.6 s a run;
    # the page on it is test_webgpu_path_matches_onnx_classifier)
    monkeypatch.setattr(browser, "WEBGPU_FLAGS", ("--disable-features=WebGPU,Vulkan",))
    gpu = browser.time_page(server.url, "resnet10", "browser-webgpu", "fp32", 1, 1, chromium, launcher=browser_type)
    assert gpu.ep == "wasm" and gpu.median_ms is None and gpu.note == browser.NO_ADAPTER


def test_bench_browser_rows_sit_beside_native_ones() -> None:
    from aperture_zoo.export.bench import BenchRow, format_table

    rows = browser.add_native_ratios([
        BenchRow("ort-fp32", "cpu", 1, 200.0, ms_per_batch=5.0, threads=1),
        BenchRow("ort-int8", "cpu", 1, 500.0, ms_per_batch=2.0, threads=1),
        BenchRow("browser-wasm-fp32", "cpu", 1, 100.0, ms_per_batch=10.0, note="fp32", threads=1),
        BenchRow("browser-wasm-int8", "cpu", 1, 100.0, ms_per_batch=10.0, note="int8", threads=2),
    ])
    assert rows[2].note.endswith("2.0× ort-fp32 time")
    assert "×" not in rows[3].note  # other thread count: no ratio
    head, _, *body = format_table(rows).splitlines()
    assert [c.strip() for c in head.split("|")][1:4] == ["runtime", "device", "threads"]
    cells = [c.strip() for c in body[3].split("|")][1:4]
    assert cells[0].split(" [")[0] == "browser-wasm-int8" and cells[1:] == ["cpu", "2"]  # [n]: its footnote


def test_bench_browser_variant_without_chromium_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("APERTURE_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    result = CliRunner().invoke(app, ["bench", "resnet10", "--variants", "browser-wasm"])
    assert result.exit_code == 2, result.output
    assert "apt-get install chromium" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_int8_is_the_default_only_where_it_agrees_with_fp32(tmp_path: Path) -> None:
    def files(agreement: float | None) -> list[DemoFile]:
        return [DemoFile("fp32", "m.onnx", 1), DemoFile("int8", "m.int8.onnx", 1, agreement, 1000)]

    assert demo.default_precision(files(99.7)) == "int8"
    assert demo.default_precision(files(99.0)) == "int8"
    assert demo.default_precision(files(98.9)) == "fp32"
    assert demo.default_precision(files(None)) == "fp32"   # not validated on images: no figure, no default
    assert demo.default_precision([DemoFile("fp32", "m.onnx", 1)]) == "fp32"
    report = tmp_path / "m.int8.report.json"
    made = {"onnx_sha256": "0" * 64, "weights_sha256": "1" * 64}  # the file it judged is not here: the weights decide
    report.write_text(json.dumps({**made, "comparisons": [
        {"inputs": "random, all", "agreement": 100.0, "num_images": 72},
        {"inputs": "CIFAR-10 test", "agreement": 99.7, "num_images": 1000}]}))
    assert demo.validation_agreement(report, tmp_path / "m.int8.onnx", "1" * 64) == (99.7, 1000)
    assert demo.validation_agreement(report, tmp_path / "m.int8.onnx", "2" * 64) is None  # other weights' report
    report.write_text(json.dumps({**made, "comparisons": [{"inputs": "random, all", "agreement": 100.0,
                                                           "num_images": 72}]}))
    assert demo.validation_agreement(report, tmp_path / "m.int8.onnx", "1" * 64) is None  # random inputs only
    assert demo.validation_agreement(tmp_path / "missing.json", tmp_path / "m.int8.onnx", "1" * 64) is None


# ---------------------------------------------------------------- the server and its preparation


def _get(url: str) -> tuple[int, Any, bytes]:
    """Status, headers (case-insensitive) and body of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, b""


def test_server_serves_page_models_and_isolation_headers(server: DemoServer, models_dir: Path) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    status, headers, body = _get(server.url)
    assert status == 200 and b"app.js" in body
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    status, headers, body = _get(server.url + "models/models.json")
    assert status == 200 and json.loads(body)["models"][0]["name"] == "resnet10"
    status, headers, _ = _get(server.url + "app.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert _get(server.url + "models/../../../../etc/passwd")[0] == 404
    assert _get(server.url + "models/%2e%2e/index.html")[0] == 404  # /models/ never reaches the page folder


def test_port_in_use_is_a_clear_error(server: DemoServer) -> None:
    port = server.httpd.server_address[1]
    with pytest.raises(DemoError, match=rf"port {port} .* in use.*--port"):
        DemoServer(WEB, port=port)


def test_cli_port_in_use_is_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["demo", "--port", str(port)])
    if "onnxruntime-web is not installed" in result.output:
        pytest.skip("onnxruntime-web is not installed: the CLI stops there first")
    assert result.exit_code == 2, result.output
    assert "in use" in result.output and "--port" in result.output and "Traceback" not in result.output


def test_cli_unknown_model_is_one_line(tmp_path: Path) -> None:
    web = tmp_path / "web"
    _fake_runtime(web, b"ort")
    result = CliRunner().invoke(app, ["demo", "resnet99", "--web-dir", str(web), "--port", "0"])
    assert result.exit_code == 2 and "resnet99" in result.output and "Traceback" not in result.output


def _fake_runtime(web: Path, content: bytes) -> Path:
    dist = web / demo.ORT_DIST
    dist.mkdir(parents=True)
    (dist / "ort.wasm.min.mjs").write_bytes(content)
    (web / "index.html").write_text("<!doctype html>")
    digest = hashlib.sha256(b"ort").hexdigest()
    (web / demo.ORT_CHECKSUMS).write_text(f"# pinned\n{digest}  {demo.ORT_DIST.as_posix()}/ort.wasm.min.mjs\n")
    return web


def test_runtime_check_names_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / demo.ORT_CHECKSUMS).write_text("")
    with pytest.raises(DemoError, match=r"onnxruntime-web is not installed.*npm ci --prefix"):
        demo.check_web_runtime(missing)
    assert demo.check_web_runtime(_fake_runtime(tmp_path / "good", b"ort")).is_dir()
    with pytest.raises(DemoError, match=r"SHA-256 .* not the pinned .*npm ci"):
        demo.check_web_runtime(_fake_runtime(tmp_path / "tampered", b"something else"))


def test_the_shipped_checksums_cover_what_the_page_loads() -> None:
    listed = {line.split()[1] for line in (WEB / demo.ORT_CHECKSUMS).read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    app_js = (WEB / "app.js").read_text()
    for name in ("ort.wasm.min.mjs", "ort.webgpu.min.mjs"):
        assert name in app_js and f"{demo.ORT_DIST.as_posix()}/{name}" in listed
    lock = json.loads((WEB / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/onnxruntime-web"]
    assert pinned["version"] == json.loads((WEB / "package.json").read_text())["dependencies"]["onnxruntime-web"]
    assert pinned["integrity"].startswith("sha512-") and pinned["version"] in (WEB / demo.ORT_CHECKSUMS).read_text()


def test_gallery_is_small_labelled_and_real(classifier: OnnxClassifier) -> None:
    index = json.loads((WEB / "gallery" / "gallery.json").read_text())["images"]
    files = sorted((WEB / "gallery").glob("*.png"))
    assert {e["file"] for e in index} == {f.name for f in files} and len(files) >= 20
    assert sum(f.stat().st_size for f in files) < 300_000
    assert {e["label"] for e in index} == set(classifier.labels)
    for f in files[:3]:
        with Image.open(f) as img:
            assert img.size == (32, 32) and img.mode == "RGB"


def test_prepare_models_exports_once_and_lists_models_without_weights(
    network: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aperture_zoo.weights import save_weights

    weights = tmp_path / "weights"
    save_weights(network, weights / "resnet10" / "model.safetensors", metadata={"test_top1": 12.5})
    from aperture_zoo.pretrained import fetch_weights

    monkeypatch.setattr(demo, "published_weights", lambda name: fetch_weights(
        name, weights / name / "model.safetensors") if name == "resnet10" else None)
    exports: list[str] = []
    real_export = demo.export_for_demo

    def counting_export(model: Any, out: Path, sha: str | None = None, **kw: Any) -> DemoModel:
        exports.append(model.spec.name)
        return real_export(model, out, sha, validate=False, exporter="legacy")

    monkeypatch.setattr(demo, "export_for_demo", counting_export)
    out = tmp_path / "models"
    entries = {e.name: e for e in demo.prepare_models(out)}
    assert exports == ["resnet10"]
    assert entries["resnet10"].available and entries["resnet10"].top1 == 12.5
    assert entries["resnet10"].file == "resnet10.onnx" and (out / "resnet10.onnx").is_file()
    assert [n for n, e in entries.items() if not e.available] == ["resnet18", "resnet20", "resnet22", "resnet24", "resnet32"]
    assert all(e.reason == demo.NO_WEIGHTS for e in entries.values() if not e.available)
    manifest = json.loads((out / demo.MANIFEST).read_text())
    assert manifest["format"] == demo.MANIFEST_FORMAT and len(manifest["models"]) == 6
    # a second run reuses the file; new weights are exported again
    demo.prepare_models(out)
    assert exports == ["resnet10"]
    changed = create_model("resnet10")
    save_weights(changed, weights / "resnet10" / "model.safetensors")
    demo.prepare_models(out)
    assert exports == ["resnet10", "resnet10"]
    probs = OnnxClassifier(out / "resnet10.onnx", provider="cpu").predict_proba(np.zeros((1, 32, 32, 3), np.uint8))
    assert probs.shape == (1, 10)


def test_prepare_models_rejects_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="resnet99"):
        demo.prepare_models(tmp_path, ["resnet99"])


# ---------------------------------------------------------------- the one preprocessing rule


_NODE_RESIZE = """
import fs from "node:fs";
import { resizeBilinearRGB } from %s;
const cases = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const out = cases.map(([file, w, h, ow, oh]) =>
  Buffer.from(resizeBilinearRGB(new Uint8Array(fs.readFileSync(file)), w, h, ow, oh)).toString("base64"));
process.stdout.write(JSON.stringify(out));
"""


def test_preprocess_js_resizes_exactly_like_load_image(tmp_path: Path) -> None:
    """apps/web/preprocess.js against resize_bilinear, bit for bit, on many shapes (node, no browser)."""
    node = shutil.which("node")
    if node is None:
        _unavailable("node is not installed, so preprocess.js cannot be checked outside the browser")
    rng = np.random.default_rng(0)
    sizes = [(7, 300), (300, 7), (1, 1), (1, 500), (500, 1), (33, 32), (32, 33), (640, 480), (31, 31)]
    sizes += [(int(w), int(h)) for w, h in rng.integers(1, 260, (40, 2))]
    cases, want = [], []
    for i, (w, h) in enumerate(sizes):
        target = (32, 32) if i % 3 else (int(rng.integers(1, 70)), int(rng.integers(1, 70)))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        (tmp_path / f"{i}.rgb").write_bytes(pixels.tobytes())
        cases.append([str(tmp_path / f"{i}.rgb"), w, h, *target])
        want.append(np.asarray(resize_bilinear(Image.fromarray(pixels), target)))
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    script = tmp_path / "resize.mjs"
    script.write_text(_NODE_RESIZE % json.dumps((WEB / "preprocess.js").as_uri()))
    done = subprocess.run([node, str(script), str(tmp_path / "cases.json")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for (_, w, h, ow, oh), expected, got in zip(cases, want, json.loads(done.stdout)):
        page = np.frombuffer(base64.b64decode(got), np.uint8).reshape(oh, ow, 3)
        np.testing.assert_array_equal(page, expected, err_msg=f"{w}x{h} -> {ow}x{oh}")


def test_preprocess_js_gives_the_golden_pixels(tmp_path: Path) -> None:
    """preprocess.js on the odd inputs of test_images.py (upright RGB) gives the checked-in 32x32 numbers."""
    from PIL import ImageOps

    from test_images import NAMES, golden, input_files

    node = shutil.which("node")
    if node is None:
        _unavailable("node is not installed, so preprocess.js cannot be checked outside the browser")
    cases, files = [], input_files(tmp_path)
    for name, path in files.items():
        with Image.open(path) as img:
            rgb = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        (tmp_path / f"{name}.rgb").write_bytes(rgb.tobytes())
        cases.append([str(tmp_path / f"{name}.rgb"), rgb.shape[1], rgb.shape[0], 32, 32])
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    script = tmp_path / "resize.mjs"
    script.write_text(_NODE_RESIZE % json.dumps((WEB / "preprocess.js").as_uri()))
    done = subprocess.run([node, str(script), str(tmp_path / "cases.json")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert sorted(files) == sorted(NAMES) and len(got) == len(NAMES)
    for name, page in zip(files, got):
        np.testing.assert_array_equal(np.frombuffer(base64.b64decode(page), np.uint8).reshape(32, 32, 3),
                                      golden(name), err_msg=name)


def test_resize_is_horizontal_then_vertical_whatever_pillow_does() -> None:
    tall = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 7, 3), dtype=np.uint8))
    two_passes = tall.resize((32, 300), Image.Resampling.BILINEAR).resize((32, 32), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(np.asarray(resize_bilinear(tall, (32, 32))), np.asarray(two_passes))


def test_load_image_turns_exif_rotated_images_upright(tmp_path: Path) -> None:
    upright = Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 48, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated 90° counter-clockwise: viewers turn it clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rotated.png", exif=exif.tobytes())
    pixels, notices = load_image(tmp_path / "rotated.png", size=(48, 32))
    np.testing.assert_array_equal(pixels, np.asarray(upright))
    assert notices == ["turned upright (EXIF orientation 6)"]
