"""Every export format for real: written from the published resnet10, validated where it runs, predicted.

Marked ``runtimes`` (``make test-runtimes``, which installs the ``formats`` extra; CI runs it): the tool
chains are heavy (OpenVINO + NNCF, ExecuTorch, coremltools; litert-torch in an environment it makes
once under the runtimes cache folder). Each format takes well under a few minutes on 2 cores: resnet10,
a few hundred test images of real CIFAR-10 with APERTURE_CIFAR10_DIR (as CI has). Without it the synthetic
set stands in for fp32 (and Core ML's fp16 spec check) only: bf16 and int8 files are judged by their
top-1 agreement with fp32 on test images (>= 99.5 % / 99 %), and the published weights on synthetic
patterns give near-ties that no reduced precision keeps (OpenVINO bf16 99.0 %, ExecuTorch int8 97.5 %),
so those are exported and judged only with real data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from aperture_zoo.export.formats import FORMATS

pytestmark = pytest.mark.runtimes

VAL_IMAGES = 300


@pytest.fixture(scope="module")
def model():
    import aperture_zoo

    return aperture_zoo.load("resnet10", pretrained=True)


@pytest.fixture(scope="module")
def data_dir(synthetic_cifar: Path) -> str:
    return os.environ.get("APERTURE_CIFAR10_DIR") or str(synthetic_cifar)


@pytest.mark.parametrize("fmt", ["openvino", "executorch", "tflite", "coreml"])
def test_each_format_exports_validates_and_predicts(fmt: str, model, data_dir: str, tmp_path: Path, one_thread) -> None:
    from aperture_zoo.catalog import get_weights
    from aperture_zoo.export.formats import precisions_for
    from aperture_zoo.export.pipeline import export_formats

    sha = get_weights("resnet10").sha256
    real = bool(os.environ.get("APERTURE_CIFAR10_DIR"))
    result = export_formats(model, tmp_path, precisions_for([fmt], fp16=fmt == "coreml", bf16=fmt == "openvino" and real,
                                                            int8=fmt != "coreml" and real),
                            data_dir=data_dir, max_val_images=VAL_IMAGES, calibration_images=128, weights_sha256=sha)
    by_precision = {r.precision: r for r in result.reports}
    expected = set(FORMATS[fmt].precisions) - (set() if real or fmt == "coreml" else {"bf16", "int8"})
    assert set(by_precision) == expected, [r.onnx_file for r in result.reports]
    assert result.passed, {p: r.failures for p, r in by_precision.items()}
    for precision, report in by_precision.items():
        d = report.to_dict()
        assert d["format"] == fmt and Path(report.onnx_file).exists()
        written = json.loads(Path(result.report_files[list(by_precision).index(precision)]).read_text())
        assert written["passed"] and written["format"] == fmt
        if fmt == "coreml":
            assert not report.ran and report.provider.startswith("not run")
            continue
        test = report.comparisons[-1]
        assert test.inputs == "CIFAR-10 test" or test.inputs == "test images"
        if precision == "fp32":  # the ONNX fp32 gate: every top-1 as PyTorch's, logits within 1e-4
            assert test.agreement == 100.0 and test.max_abs_diff <= 1e-4, d
    _provenance(tmp_path, result, sha)
    if fmt != "coreml":
        _metadata_and_prediction(fmt, result.files, sha)


def _provenance(folder: Path, result, sha: str) -> None:
    """Each report names the exact model it judged (an IR's .xml and .bin, a package's every file) and
    the weights; the folder's every join checks out; the stage the set was written in is gone."""
    from aperture_zoo.files import model_sha256
    from aperture_zoo.provenance import check_folder

    for report, report_file in zip(result.reports, result.report_files):
        written = json.loads(Path(report_file).read_text())
        assert written["onnx_sha256"] == model_sha256(report.onnx_file) and written["weights_sha256"] == sha
    checked = check_folder(folder, sha, "resnet10")
    assert sorted(checked.reports) == sorted(p.name for p in result.files) == sorted(checked.model_files)
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".aperture-stage")]


def _metadata_and_prediction(fmt: str, files: list[Path], sha: str) -> None:
    """The file's own metadata carries the contract; the classifier answers as the ONNX file does."""
    from aperture_zoo.export.predict import OnnxClassifier
    from aperture_zoo.samples import sample_images

    images = [p for p, _ in sample_images()][:6]
    fp32 = next(f for f in files if f.name == f"resnet10{FORMATS[fmt].suffix}")
    clf = OnnxClassifier(fp32)
    assert clf.metadata["weights_sha256"] == sha and clf.metadata["format"] == f"aperture_zoo.{fmt}/1"
    assert clf.labels[3] == "cat" and clf.calibrated
    got = clf.predict(images, top_k=10)
    reference = _onnx_reference(images)
    for prediction, expected in zip(got, reference):
        assert prediction.label == expected.label
        probs = dict(prediction.top)
        assert max(abs(probs[c] - p) for c, p in expected.top) < 1e-4
    _float_tail(files)


def _float_tail(files: list[Path]) -> None:
    """Every precision's probabilities are the weights' calibrator applied to the file's own logits (the
    tail after ``logits`` is computed in float32 in every runtime, as in the ONNX fp16/int8 files)."""
    from aperture_zoo.calibrators import from_metadata
    from aperture_zoo.export.sessions import open_session
    from aperture_zoo.weights import decode_metadata

    pixels = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    for path in files:
        session = open_session(path, "cpu")
        calibrator = from_metadata(decode_metadata(session.get_modelmeta().custom_metadata_map), path.name)
        assert calibrator is not None and calibrator.kind != "temperature", path.name  # the published one
        outs = [session.run(None, {"pixel_values": pixels[i : i + 1]}) for i in range(len(pixels))]
        logits, probs = (np.concatenate([o[k] for o in outs]).astype(np.float64) for k in (0, 1))
        assert np.abs(probs - calibrator.apply(logits)).max() < 1e-4, path.name


def _onnx_reference(images: list[Path]):
    import aperture_zoo
    from aperture_zoo.export.onnx_export import to_onnx
    from aperture_zoo.export.predict import OnnxClassifier
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = to_onnx(aperture_zoo.load("resnet10", pretrained=True), Path(tmp) / "resnet10.onnx")
        return OnnxClassifier(path, provider="cpu").predict(images, top_k=10)


def test_openvino_runs_the_onnx_file_itself(model, tmp_path: Path) -> None:
    from aperture_zoo.export.onnx_export import to_onnx
    from aperture_zoo.export.predict import OnnxClassifier

    path = to_onnx(model, tmp_path / "resnet10.onnx")
    pixels = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    ov = OnnxClassifier(path, runtime="openvino")
    assert ov.providers[0].startswith("openvino") and ov.providers[0].endswith("f32")
    np.testing.assert_allclose(ov.logits(pixels), OnnxClassifier(path, provider="cpu").logits(pixels), atol=1e-4)


def test_a_damaged_file_fails_validation_and_is_moved_aside(model, data_dir: str, tmp_path: Path) -> None:
    """A file of other weights than the reference fails, and is renamed (its .bin too) with its report."""
    from aperture_zoo.catalog import get_weights
    from aperture_zoo.export.format_export import export_file
    from aperture_zoo.export.pipeline import ExportResult, _validate_files
    from aperture_zoo.progress import SilentProgress
    import copy
    import torch

    other = copy.deepcopy(model)
    with torch.no_grad():
        other.fc.weight.mul_(1.01)
    path = export_file(other, "openvino", "fp32", tmp_path / "resnet10.xml")
    result = ExportResult(files=[path])
    _validate_files(result, model, SilentProgress(), provider="cpu", data_dir=data_dir, max_val_images=100,
                    weights_sha256=get_weights("resnet10").sha256, out=tmp_path)
    assert not result.passed and not path.exists() and not path.with_suffix(".bin").exists()
    assert [p.name for p in result.failed_files] == ["resnet10.FAILED.xml"]
    assert (tmp_path / "resnet10.FAILED.bin").exists() and (tmp_path / "resnet10.FAILED.xml.report.json").exists()


def test_an_ir_with_another_exports_bin_is_refused_by_predict(tmp_path: Path) -> None:
    """The .xml names its .bin by content: a .bin of other weights beside it is one line (exit 2), never
    another model's answers; with the report beside it, that report refuses it too."""
    import shutil

    import torch
    from typer.testing import CliRunner

    import aperture_zoo
    from aperture_zoo.cli import app
    from aperture_zoo.export.format_export import export_file
    from aperture_zoo.export.predict import OnnxClassifier
    from aperture_zoo.provenance import StaleFileError

    torch.manual_seed(0)
    mine = aperture_zoo.create_model("resnet10", channels=(8, 16, 16, 32)).eval()
    other = aperture_zoo.create_model("resnet10", channels=(8, 16, 16, 32)).eval()
    path = export_file(mine, "openvino", "fp32", tmp_path / "a" / "resnet10.xml")
    OnnxClassifier(path)  # its own .bin: fine
    foreign = export_file(other, "openvino", "fp32", tmp_path / "b" / "resnet10.xml")
    shutil.copyfile(foreign.with_suffix(".bin"), path.with_suffix(".bin"))
    with pytest.raises(StaleFileError, match=r"resnet10\.bin' is not the weights file resnet10\.xml was saved with"):
        OnnxClassifier(path)
    image = Path(aperture_zoo.__file__).parent / "sample_images"
    result = CliRunner().invoke(app, ["predict", str(next(image.glob("*.png"))), "--file", str(path)])
    assert result.exit_code == 2 and result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
