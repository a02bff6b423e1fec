"""The formats' options, missing-extra errors, file naming and the one validation through a session.

Fast and without the heavy tool chains (OpenVINO, ExecuTorch, litert-torch, coremltools): the real
exports, validations and predictions per format are in tests/test_formats_runtimes.py (``-m runtimes``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.export import formats
from aperture_zoo.export.errors import ExportError, OnnxFileError
from aperture_zoo.export.formats import (
    FORMATS, MissingExtraError, companion_files, file_name, format_of, parse_formats, precisions_for, require,
)

runner = CliRunner()


def test_formats_parse_comma_separated_repeated_and_the_onnx_shorthand() -> None:
    assert parse_formats(["tflite,openvino", "coreml"]) == ["openvino", "tflite", "coreml"]
    assert parse_formats([], onnx_flag=True) == ["onnx"]
    assert parse_formats(["ExecuTorch"], onnx_flag=True) == ["onnx", "executorch"]
    with pytest.raises(ExportError, match="unknown --format tensorrt; choose from onnx, openvino"):
        parse_formats(["onnx,tensorrt"])
    with pytest.raises(ExportError, match="choose a format"):
        parse_formats([])


def test_each_precision_flag_goes_to_the_formats_that_have_it() -> None:
    got = precisions_for(["onnx", "openvino", "executorch", "tflite", "coreml"], fp16=True, bf16=True, int8=True)
    assert got == {"onnx": ["fp32", "fp16", "int8"], "openvino": ["fp32", "bf16", "int8"],
                   "executorch": ["fp32", "int8"], "tflite": ["fp32", "int8"], "coreml": ["fp32", "fp16"]}
    assert precisions_for(["tflite"]) == {"tflite": ["fp32"]}
    with pytest.raises(ExportError, match="--bf16 applies to the openvino format"):
        precisions_for(["onnx", "tflite"], bf16=True)
    with pytest.raises(ExportError, match="--fp16 applies to the onnx, coreml"):
        precisions_for(["executorch"], fp16=True)


def test_file_names_and_their_formats_round_trip() -> None:
    for name, fmt in FORMATS.items():
        for precision in fmt.precisions:
            path = Path(file_name("resnet22", name, precision))
            assert format_of(path).name == name
            assert ("." + precision in path.name) == (precision != "fp32")
    assert companion_files("a/resnet22.int8.xml") == [Path("a/resnet22.int8.xml"), Path("a/resnet22.int8.bin")]
    with pytest.raises(ExportError, match="not an exported model file"):
        format_of("resnet22.safetensors")


def test_a_missing_extra_is_one_line_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats.importlib.util, "find_spec", lambda name: None)
    for name, extra in (("openvino", "openvino"), ("executorch", "executorch"), ("coreml", "coreml")):
        with pytest.raises(MissingExtraError) as err:
            require(name)
        assert f"pip install 'aperture_zoo[{extra}]'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MissingExtraError, match=r"to run tflite files, ai_edge_litert .*aperture_zoo\[litert\]"):
        require("tflite", "run")
    with pytest.raises(ExportError, match="do not run on this system"):
        require("coreml", "run")


def test_cli_names_the_extra_before_loading_any_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(formats, "missing_modules", lambda modules: [m for m in modules if m in ("openvino", "nncf")])
    result = runner.invoke(app, ["export", "resnet10", "--random-init", "--format", "onnx,openvino", "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert "pip install 'aperture_zoo[openvino]'" in result.output
    assert not list(tmp_path.iterdir())  # nothing written, not even the ONNX file
    result = runner.invoke(app, ["export", "resnet10", "--random-init", "--format", "tflite", "--bf16"])
    assert result.exit_code == 2 and "--bf16 applies to the openvino format" in result.output
    result = runner.invoke(app, ["export", "resnet10", "--random-init"])
    assert result.exit_code == 2 and "choose a format" in result.output


def test_predict_runtime_needs_a_file_and_a_format_it_runs(tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", "x.png", "--runtime", "openvino"])
    assert result.exit_code == 2 and "--runtime openvino runs an exported file; pass it with --file" in result.output
    from aperture_zoo.export.sessions import open_session

    pte = tmp_path / "m.pte"
    pte.write_bytes(b"")
    with pytest.raises(OnnxFileError, match="openvino does not run executorch files"):
        open_session(pte, runtime="openvino")
    with pytest.raises(OnnxFileError, match="unknown --runtime 'tensorrt'"):
        open_session(pte, runtime="tensorrt")
    with pytest.raises(OnnxFileError, match="--provider cuda applies to ONNX files"):
        open_session(pte, "cuda")


def test_reports_of_one_precision_in_several_formats_do_not_collide() -> None:
    from aperture_zoo.export.pipeline import failed_path
    from aperture_zoo.export.validate import report_path

    names = {report_path(file_name("resnet22", f, "fp32")).name for f in FORMATS}
    assert len(names) == len(FORMATS) and "resnet22.report.json" in names
    assert failed_path("resnet22.int8.xml").name == "resnet22.int8.FAILED.xml"


def test_every_format_carries_the_onnx_metadata_keys() -> None:
    import aperture_zoo
    from aperture_zoo.export.format_export import format_metadata
    from aperture_zoo.export.onnx_export import build_metadata

    model = aperture_zoo.create_model("resnet10")
    onnx_keys = set(build_metadata(model, opset=18, normalize=True, exporter="dynamo", batch=None,
                                   weights_sha256="ab" * 32))
    for fmt in FORMATS:
        meta = format_metadata(model, fmt, "int8", weights_sha256="ab" * 32, temperature=0.75, tta=False)
        assert onnx_keys - set(meta) == {"opset", "onnx_version"}, fmt
        assert meta["format"] == f"aperture_zoo.{fmt}/1" and meta["precision"] == "int8"
        assert meta["weights_sha256"] == "ab" * 32 and json.loads(meta["label_names"])[3] == "cat"
        assert json.loads(meta["probabilities"])["calibrated"] is True and float(meta["temperature"]) == 0.75


def test_every_format_carries_the_calibrator_the_onnx_file_carries() -> None:
    """The weights' calibrator (any kind) goes into every format's metadata and its graph (``graph.wrapper``),
    by the same rule as ``to_onnx`` (``export_calibrator``)."""
    import aperture_zoo
    from aperture_zoo.calibrators import Calibrator, from_metadata
    from aperture_zoo.export.format_export import format_metadata, wrapper
    from aperture_zoo.export.onnx_export import export_calibrator
    from aperture_zoo.weights import decode_metadata

    torch.manual_seed(0)
    model = aperture_zoo.create_model("resnet10").eval()
    model.calibrator = Calibrator("spline", 1.0, knots=(1.0, 3.0, 4.2), slopes=(0.8, 1.5, 6.0, 0.5))
    assert export_calibrator(model) == model.calibrator
    for fmt in FORMATS:
        meta = format_metadata(model, fmt, "fp32", weights_sha256="ab" * 32, temperature=None, tta=False)
        assert from_metadata(decode_metadata(meta), fmt) == model.calibrator and "temperature" not in meta
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        logits, probs = wrapper(model, calibrator=export_calibrator(model), tta=False)(x)
    assert np.abs(probs.numpy() - model.calibrator.apply(logits.numpy())).max() < 1e-5


class _FakeSession:
    """A runtime session (sessions.RuntimeSession) computing the model in numpy-facing torch: what an
    ExecuTorch or LiteRT file of that model gives, with ``shift`` added to its logits."""

    def __init__(self, model, meta: dict[str, str], shift: float = 0.0) -> None:
        from aperture_zoo.export.format_export import wrapper
        from aperture_zoo.export.onnx_export import export_calibrator
        from aperture_zoo.export.sessions import ModelMeta, Port

        self.module, self.shift = wrapper(model, calibrator=export_calibrator(model), tta=False), shift
        self.meta = ModelMeta(meta)
        self.ports = [Port("pixel_values", ["N", 3, 32, 32])], [Port("logits", ["N", 10]), Port("probabilities", ["N", 10])]

    def get_inputs(self):
        return self.ports[0]

    def get_outputs(self):
        return self.ports[1]

    def get_providers(self):
        return ["fake XNNPACK"]

    def get_modelmeta(self):
        return self.meta

    def run(self, names, feed):
        with torch.no_grad():
            logits, probs = self.module(torch.from_numpy(next(iter(feed.values()))))
        return [logits.numpy() + self.shift, probs.numpy()]


@pytest.mark.parametrize("shift, passed", [(0.0, True), (1e-3, False)])
def test_validate_judges_any_runtime_through_the_session_interface(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                   shift: float, passed: bool) -> None:
    import aperture_zoo
    from aperture_zoo.export import sessions
    from aperture_zoo.export.format_export import format_metadata
    from aperture_zoo.export.validate import validate

    torch.manual_seed(0)
    model = aperture_zoo.create_model("resnet10").eval()
    meta = format_metadata(model, "executorch", "fp32", weights_sha256=None, temperature=None, tta=False)
    monkeypatch.setattr(sessions, "open_session", lambda path, *a, **k: _FakeSession(model, meta, shift))
    (tmp_path / "resnet10.pte").write_bytes(b"program")
    report = validate(tmp_path / "resnet10.pte", model, batch_sizes=(1, 3))
    assert report.passed is passed, report.failures
    assert report.provider == "fake XNNPACK" and report.to_dict()["format"] == "executorch"
    if not passed:
        assert "max |Δlogit| 0.001 > 0.0001" in report.failures[0]


def test_bench_lists_the_format_rows_only_where_their_runtime_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    from aperture_zoo.export.bench import parse_variants

    assert parse_variants("ort-fp32,ov-bf16,litert-int8") == ["ort-fp32", "ov-bf16", "litert-int8"]
    monkeypatch.setattr(formats, "missing_modules", lambda modules: [m for m in modules if m != "onnx"])
    assert parse_variants("all") == ["torch-eager", "torch-channels-last", "torch-compile", "ort-fp32", "ort-fp16",
                                     "ort-int8"]
    with pytest.raises(ExportError, match="unknown variant"):
        parse_variants("ov-fp8")


def test_bench_rows_compare_every_runtime_with_onnxruntime_fp32() -> None:
    from aperture_zoo.export.bench import BenchRow, add_ratios

    rows = add_ratios([BenchRow("ort-fp32", "cpu", 1, 100.0), BenchRow("ov-bf16", "cpu", 1, 250.0),
                       BenchRow("torch-eager", "cpu", 1, 50.0)])
    assert rows[1].ratio_to_ort_fp32 == pytest.approx(2.5) and rows[2].ratio_to_ort_fp32 is None
    assert np.isclose(rows[1].ratio_to_eager, 5.0)


def test_a_file_its_runtime_cannot_run_fails_validation_and_is_moved_aside(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    import aperture_zoo
    from aperture_zoo.export import sessions
    from aperture_zoo.export.format_export import format_metadata
    from aperture_zoo.export.pipeline import ExportResult, _validate_files
    from aperture_zoo.progress import SilentProgress

    model = aperture_zoo.create_model("resnet10").eval()
    meta = format_metadata(model, "executorch", "fp32", weights_sha256=None, temperature=None, tta=False)
    broken = _FakeSession(model, meta)
    broken.run = lambda names, feed: (_ for _ in ()).throw(RuntimeError("method->set_inputs() failed with error 0x10"))
    monkeypatch.setattr(sessions, "open_session", lambda path, *a, **k: broken)
    path = tmp_path / "resnet10.pte"
    path.write_bytes(b"program")
    result = ExportResult(files=[path])
    _validate_files(result, model, SilentProgress(), provider="cpu", data_dir=None, max_val_images=None,
                    weights_sha256="0" * 64, out=tmp_path)
    assert not result.passed and not path.exists() and (tmp_path / "resnet10.FAILED.pte").read_bytes() == b"program"
    report = json.loads((tmp_path / "resnet10.FAILED.pte.report.json").read_text())
    assert report["failures"] == ["resnet10.pte: the runtime could not run it (RuntimeError: method->set_inputs() "
                                  "failed with error 0x10)"]
