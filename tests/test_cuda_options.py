"""onnxruntime CUDA provider options: one parser, checked everywhere, used only on CUDA, said when unused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.export.errors import ExportError
from aperture_zoo.export.onnx_export import INPUT_NAME, to_onnx
from aperture_zoo.export.predict import OnnxClassifier
from aperture_zoo.export.runtime import CUDA_OPTIONS, create_session, cuda_options_note, parse_cuda_options
from aperture_zoo.model import create_model
from profiles import examples


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("resnet10", channels=(8, 16, 16, 32)).eval()
    return to_onnx(model, tmp_path_factory.mktemp("cudaopt") / "tiny.onnx", exporter="legacy")


def test_parses_and_normalises() -> None:
    assert parse_cuda_options("") == {} and parse_cuda_options(None) == {}
    assert parse_cuda_options("cudnn_conv_algo_search=heuristic, prefer_nhwc=true,enable_cuda_graph=0") == {
        "cudnn_conv_algo_search": "HEURISTIC", "prefer_nhwc": "1", "enable_cuda_graph": "0"}
    assert parse_cuda_options({"prefer_nhwc": 1}) == {"prefer_nhwc": "1"}


@pytest.mark.parametrize("text, message", [
    ("cudnn_algo=HEURISTIC", "unknown CUDA provider option 'cudnn_algo'; valid: cudnn_conv_algo_search"),
    ("cudnn_conv_algo_search=FASTEST", "use one of EXHAUSTIVE, HEURISTIC, DEFAULT"),
    ("prefer_nhwc=2", "use one of 0, 1"),
    ("prefer_nhwc", "expected key=value"),
])
def test_bad_options_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(ExportError, match=message) as info:
        parse_cuda_options(text)
    assert "\n" not in str(info.value)


@settings(max_examples=examples(200), deadline=None)
@given(st.text(max_size=60))
def test_any_text_parses_or_is_refused_clearly(text: str) -> None:
    try:
        out = parse_cuda_options(text)
    except ExportError as exc:
        assert "\n" not in str(exc)
        return
    assert all(key in CUDA_OPTIONS and value in CUDA_OPTIONS[key] for key, value in out.items())


def test_checked_then_unused_on_cpu(onnx_file: Path) -> None:
    with pytest.raises(ExportError, match="unknown CUDA provider option"):
        create_session(onnx_file, "cpu", cuda_options="nope=1")
    session = create_session(onnx_file, "cpu", cuda_options="prefer_nhwc=1")
    note = cuda_options_note({"prefer_nhwc": "1"}, session)
    assert note is not None and "prefer_nhwc=1" in note and "unused" in note and "\n" not in note
    assert cuda_options_note({}, session) is None
    clf = OnnxClassifier(onnx_file, provider="cpu", cuda_options="cudnn_conv_algo_search=HEURISTIC")
    assert len(clf.notes) == 1 and "cudnn_conv_algo_search=HEURISTIC" in clf.notes[0]
    with pytest.raises(ExportError, match="enable_cuda_graph=1 needs IO binding"):
        OnnxClassifier(onnx_file, provider="cpu", cuda_options="enable_cuda_graph=1")


def test_io_binding_runner_gives_the_plain_runs_logits(onnx_file: Path) -> None:
    from aperture_zoo.export.bench import _bound_runner

    session = create_session(onnx_file, "cpu")
    pixels = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    run, out = _bound_runner(session, pixels, "cpu")
    run()
    np.testing.assert_allclose(out.numpy(), session.run(None, {INPUT_NAME: pixels})[0], rtol=1e-5, atol=1e-5)


def test_bench_cli_io_binding_and_cuda_options_on_cpu() -> None:
    r = CliRunner().invoke(app, ["bench", "resnet10", "--device", "cpu", "--variants", "ort-fp32", "--batch-sizes",
                                 "2", "--min-seconds", "0", "--exporter", "legacy", "--io-binding",
                                 "--cuda-options", "cudnn_conv_algo_search=HEURISTIC,prefer_nhwc=1"])
    assert r.exit_code == 0, r.output
    assert "io binding" in r.stdout  # the row says how it was measured
    assert "--cuda-options are valid but unused" in r.output
    r = CliRunner().invoke(app, ["bench", "resnet10", "--device", "cpu", "--cuda-options", "prefer_nhwc=yes please"])
    assert r.exit_code == 2 and "prefer_nhwc='yes please' is not valid" in r.output


def test_export_cli_refuses_bad_cuda_options_before_work(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["export", "resnet10", "--random-init", "--onnx", "--out", str(tmp_path),
                                 "--cuda-options", "enable_cuda_graph=maybe"])
    assert r.exit_code == 2 and "enable_cuda_graph='maybe' is not valid" in r.output
    assert not list(tmp_path.iterdir())


def test_export_cli_says_when_cuda_options_go_unused(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["export", "resnet10", "--random-init", "--onnx", "--out", str(tmp_path),
                                 "--exporter", "legacy", "--provider", "cpu", "--max-val-images", "1",
                                 "--cuda-options", "prefer_nhwc=1"])
    assert r.exit_code == 0, r.output
    assert "--cuda-options are valid but unused" in r.output and (tmp_path / "resnet10.onnx").exists()
