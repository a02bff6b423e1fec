"""Checks that must check something: each is given the bad input it exists for, and must refuse it.

"Every export is checked with ``onnx.checker`` and compared with PyTorch through onnxruntime":
the ``probabilities`` output (softmax(logits / T) with the file's temperature) included, and a
``--no-normalize --tta flip`` file (normalised input, the image and its left-right mirror averaged)
as much as any other. The browser demo serves onnxruntime-web only when every pinned file is
installed and unchanged ("a hand-edited or partly installed node_modules is caught too").
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from aperture_zoo.calibration import softmax
from aperture_zoo.model import create_model

SMALL = dict(channels=(8, 16, 16, 32))


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet10", **SMALL).eval()
    with torch.no_grad():
        model.fc.weight.normal_(0, 0.5)  # logits far enough apart that a wrong temperature shows
    return model


@pytest.fixture(scope="module")
def calibrated_file(small_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aperture_zoo.export.onnx_export import to_onnx

    return to_onnx(small_model, tmp_path_factory.mktemp("cal") / "m.onnx", temperature=0.6, exporter="legacy")


def test_validation_refuses_probabilities_that_are_not_softmax_over_the_files_temperature(
        calibrated_file: Path, small_model: torch.nn.Module, tmp_path: Path) -> None:
    import json

    import onnx

    from aperture_zoo.calibrators import Calibrator
    from aperture_zoo.export.onnx_export import set_metadata
    from aperture_zoo.export.validate import validate

    good = validate(calibrated_file, small_model, provider="cpu", batch_sizes=(4,))
    assert good.passed, good.failures
    # the graph still divides by 0.6, but the file now says its probabilities use T = 1.5
    proto = onnx.load(str(calibrated_file))
    set_metadata(proto, {"temperature": "1.5", "calibrator": json.dumps(Calibrator("temperature", 1.5).to_dict())})
    onnx.save(proto, str(tmp_path / "mislabelled.onnx"))
    bad = validate(tmp_path / "mislabelled.onnx", small_model, provider="cpu", batch_sizes=(4,))
    assert not bad.passed
    assert any("Δprobability" in f for f in bad.failures), bad.failures
    assert not any("Δlogit" in f for f in bad.failures)  # the logits themselves are right


def test_a_no_normalize_flip_tta_file_averages_the_left_right_mirror(small_model: torch.nn.Module,
                                                                    tmp_path: Path) -> None:
    from aperture_zoo.export.onnx_export import read_metadata, to_onnx
    from aperture_zoo.export.runtime import create_session
    from aperture_zoo.export.validate import validate

    path = to_onnx(small_model, tmp_path / "m.tta.onnx", normalize=False, tta=True, temperature=0.6,
                   exporter="legacy")
    meta = read_metadata(path)
    assert meta["tta"] == "flip" and meta["normalize_in_graph"] == "false"
    x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)  # already normalised input
    logits, probs = create_session(path, "cpu").run(None, {"pixel_values": x})
    mirror = np.ascontiguousarray(x[:, :, :, ::-1])  # left-right: the last (width) axis
    with torch.no_grad():
        want = 0.5 * (small_model(torch.from_numpy(x)) + small_model(torch.from_numpy(mirror)))
    np.testing.assert_allclose(logits, want.numpy(), atol=1e-4)
    np.testing.assert_allclose(probs, softmax(logits, 0.6), atol=1e-6)
    report = validate(path, small_model, provider="cpu", batch_sizes=(4,))  # export's own check of the file
    assert report.passed, report.failures


def _runtime(web: Path, files: dict[str, bytes]) -> Path:
    """An onnxruntime-web install in ``web`` with ``files`` in its dist folder, all of them pinned."""
    from aperture_zoo import demo

    dist = web / demo.ORT_DIST
    dist.mkdir(parents=True)
    lines = ["# pinned"]
    for name, content in files.items():
        (dist / name).write_bytes(content)
        lines.append(f"{hashlib.sha256(content).hexdigest()}  {demo.ORT_DIST.as_posix()}/{name}")
    (web / demo.ORT_CHECKSUMS).write_text("\n".join(lines) + "\n")
    return web


def test_a_partly_installed_browser_runtime_is_refused(tmp_path: Path) -> None:
    from aperture_zoo import demo
    from aperture_zoo.demo import DemoError

    files = {"ort.wasm.min.mjs": b"loader", "ort-wasm-simd-threaded.mjs": b"glue",
             "ort-wasm-simd-threaded.wasm": b"\0asm kernels"}
    assert demo.check_web_runtime(_runtime(tmp_path / "complete", files)).is_dir()
    for gone in files:
        web = _runtime(tmp_path / f"without-{gone}", files)
        (web / demo.ORT_DIST / gone).unlink()
        with pytest.raises(DemoError, match=f"{gone} is missing from the onnxruntime-web install.*npm ci"):
            demo.check_web_runtime(web)
    web = _runtime(tmp_path / "edited", files)
    (web / demo.ORT_DIST / "ort-wasm-simd-threaded.wasm").write_bytes(b"\0asm other kernels")
    with pytest.raises(DemoError, match="not the pinned"):
        demo.check_web_runtime(web)
