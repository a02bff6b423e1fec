"""ONNX export: parity for every architecture, metadata, normalisation, dynamic batch, fp16/int8.

Exports are shared through module-scoped fixtures: one dynamo export costs ~3 s on 2 cores, a
legacy (TorchScript) one ~0.5 s. The six-model parity sweep runs both exporters (dynamo is the
default, so it is what apps get); the fitted resnet10 dynamo file then feeds the metadata,
dynamic-batch, fp16, int8 and validation tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from aperture_zoo.data import load_split, subset
from aperture_zoo.export import ExportError
from aperture_zoo.export.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    NormalizedClassifier,
    graph_opset,
    read_metadata,
    state_dict_sha256,
    to_onnx,
)
from aperture_zoo.weights import decode_metadata
from aperture_zoo.export.quantize import calibration_pixels, to_fp16, to_int8
from aperture_zoo.export import runtime
from aperture_zoo.export.pipeline import export_model
from aperture_zoo.export.predict import OnnxClassifier
from aperture_zoo.export.runtime import create_session, cuda_driver_present
from aperture_zoo.export.validate import report_path, validate
from aperture_zoo.model import create_model
from aperture_zoo.registry import CIFAR10_CLASSES, list_models


def _seeded(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name).eval()


def _torch_logits(model: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return NormalizedClassifier(model)(torch.from_numpy(pixels)).numpy()


def _onnx_logits(path: Path, pixels: np.ndarray) -> np.ndarray:
    return create_session(path, "cpu").run(None, {INPUT_NAME: pixels})[0]


def _pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 32, 32), dtype=np.float32)


def _fit_head(model: torch.nn.Module, data_dir: Path, n: int = 100) -> torch.nn.Module:
    """Give the random network a ridge-regression head fitted on synthetic training images.

    A randomly initialised ResNet predicts one class for every image, against which top-1
    agreement and accuracy checks could never fail; with a fitted head the predictions are
    diverse and the int8/fp16 tolerances are really exercised.
    """
    train = subset(load_split("train", data_dir), n, seed=1)
    x = torch.from_numpy(train.images.astype(np.float32) / 255.0)
    with torch.no_grad():
        net = model
        normalised = (x - torch.tensor(net.spec.mean).view(1, 3, 1, 1)) / torch.tensor(net.spec.std).view(1, 3, 1, 1)
        feats = torch.flatten(net.avgpool(net.forward_features(normalised)), 1).double()
        mu = feats.mean(0)
        z = feats - mu
        y = torch.nn.functional.one_hot(torch.from_numpy(train.labels), 10).double() * 2 - 1
        ridge = 0.1 * (z * z).sum() / z.shape[1]
        w = torch.linalg.solve(z.T @ z + ridge * torch.eye(z.shape[1], dtype=torch.double), z.T @ y)
        net.fc.weight.copy_(w.T.float())
        net.fc.bias.copy_((-(mu @ w)).float())
    return model


# --------------------------------------------------------------------------- six-model parity


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("name", list_models())
def test_parity_every_architecture(name: str, exporter: str, tmp_path: Path) -> None:
    model = _seeded(name)
    path = to_onnx(model, tmp_path / f"{name}.onnx", exporter=exporter)  # type: ignore[arg-type]
    for batch in (1, 7):
        pixels = _pixels(batch, seed=batch)
        got, want = _onnx_logits(path, pixels), _torch_logits(model, pixels)
        assert got.shape == (batch, 10)
        assert np.abs(got - want).max() <= 1e-4
        assert (got.argmax(1) == want.argmax(1)).all()
    # The logits really depend on the input (by far more than the tolerance), so a file that
    # ignored its input, or dropped the normalisation, could not pass the bound above.
    assert np.ptp(want, axis=0).max() > 1e-2
    meta = decode_metadata(read_metadata(path))
    assert meta["spec"] == model.spec.arch_dict() and meta["arch"] == name and meta["exporter"] == exporter
    assert meta["opset"] == graph_opset(onnx.load(str(path))) == 18


# --------------------------------------------------------------------------- the dynamo file


@pytest.fixture(scope="module")
def fitted(synthetic_cifar: Path) -> torch.nn.Module:
    return _fit_head(_seeded("resnet10"), synthetic_cifar)


@pytest.fixture(scope="module")
def dynamo_file(fitted: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return to_onnx(fitted, tmp_path_factory.mktemp("dynamo") / "resnet10.onnx")  # default: dynamo


def test_fitted_head_is_not_degenerate(fitted: torch.nn.Module, synthetic_cifar: Path) -> None:
    test = load_split("test", synthetic_cifar)
    preds = _torch_logits(fitted, test.images.astype(np.float32) / 255).argmax(1)
    assert len(np.unique(preds)) >= 8  # otherwise agreement checks below would be vacuous


def test_dynamo_file_is_checked_and_self_describing(dynamo_file: Path, fitted: torch.nn.Module) -> None:
    onnx.checker.check_model(str(dynamo_file), full_check=True)
    proto = onnx.load(str(dynamo_file))
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME, "probabilities"]
    in_dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert in_dims[0].dim_param and [d.dim_value for d in in_dims[1:]] == [3, 32, 32]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 10
    assert not (dynamo_file.parent / (dynamo_file.name + ".data")).exists()  # one self-contained file

    meta = decode_metadata(read_metadata(dynamo_file))
    from aperture_zoo import __version__

    assert meta["arch"] == "resnet10"
    assert meta["spec"] == fitted.spec.arch_dict()
    assert meta["label_names"] == list(CIFAR10_CLASSES)
    assert meta["mean"] == list(fitted.spec.mean) and meta["std"] == list(fitted.spec.std)
    assert meta["weights_sha256"] == state_dict_sha256(fitted)
    assert meta["opset"] == 18 and {o.version for o in proto.opset_import if o.domain == ""} == {18}
    assert meta["package_version"] == __version__
    assert meta["exporter"] == "dynamo" and meta["precision"] == "fp32" and meta["normalize_in_graph"] is True
    # no temperature known for these weights: the probabilities output is the plain softmax, and says so
    assert meta["tta"] == "none" and meta["temperature"] == 1.0 and meta["probabilities"]["calibrated"] is False


def test_dynamic_batch_at_sizes_not_used_in_export(dynamo_file: Path, fitted: torch.nn.Module) -> None:
    session = create_session(dynamo_file, "cpu")
    for batch in (1, 3, 13):  # the export traced batch 2
        pixels = _pixels(batch, seed=10 + batch)
        got = session.run(None, {INPUT_NAME: pixels})[0]
        np.testing.assert_allclose(got, _torch_logits(fitted, pixels), atol=1e-4, rtol=0)


def test_normalisation_in_graph_equals_normalise_then_bare(fitted: torch.nn.Module, dynamo_file: Path, tmp_path: Path) -> None:
    bare = to_onnx(fitted, tmp_path / "bare.onnx", normalize=False, exporter="legacy")
    assert decode_metadata(read_metadata(bare))["normalize_in_graph"] is False
    pixels = _pixels(5, seed=3)
    mean = np.asarray(fitted.spec.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(fitted.spec.std, np.float32).reshape(1, 3, 1, 1)
    normalised = ((pixels - mean) / std).astype(np.float32)
    np.testing.assert_allclose(_onnx_logits(dynamo_file, pixels), _onnx_logits(bare, normalised), atol=1e-4, rtol=0)
    with torch.no_grad():
        np.testing.assert_allclose(_onnx_logits(bare, normalised), fitted(torch.from_numpy(normalised)).numpy(), atol=1e-4, rtol=0)


def test_fixed_batch_export(fitted: torch.nn.Module, tmp_path: Path) -> None:
    path = to_onnx(fitted, tmp_path / "b4.onnx", batch=4, exporter="legacy")
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 4
    report = validate(path, fitted, provider="cpu")  # validation pads to the fixed batch
    assert report.passed, report.failures
    assert [c.num_images for c in report.comparisons] == [4, 4]


def test_fp32_validation_passes_and_writes_report(dynamo_file: Path, fitted: torch.nn.Module) -> None:
    report = validate(dynamo_file, fitted, provider="cpu")
    assert report.passed, report.failures
    assert [c.num_images for c in report.comparisons] == [1, 7, 64, 72]
    assert report.provider == "CPUExecutionProvider"
    written = json.loads(report.write_json().read_text())
    assert report_path(dynamo_file).name == "resnet10.report.json"
    assert written["passed"] is True and written["tolerance"]["max_abs"] == 1e-4


def test_validation_catches_a_wrong_model(dynamo_file: Path) -> None:
    other = _seeded("resnet10", seed=1)
    report = validate(dynamo_file, other, provider="cpu")
    assert not report.passed
    assert any("max |Δlogit|" in f and "> 0.0001" in f for f in report.failures)


def test_fp16_meets_tolerance(dynamo_file: Path, fitted: torch.nn.Module, synthetic_cifar: Path) -> None:
    path = to_fp16(dynamo_file, dynamo_file.with_name("resnet10.fp16.onnx"))
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O stays fp32
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    assert decode_metadata(read_metadata(path))["precision"] == "fp16"
    report = validate(path, fitted, provider="cpu", data_dir=synthetic_cifar, max_images=60, batch_sizes=(1, 7))
    assert report.passed, report.failures
    test = report.comparisons[-1]
    assert test.num_images == 60 and test.max_abs_diff <= 5e-2 and test.agreement >= 99.5


@pytest.fixture(scope="module")
def int8_file(dynamo_file: Path, synthetic_cifar: Path) -> Path:
    return to_int8(dynamo_file, dynamo_file.with_name("resnet10.int8.onnx"), calibration_pixels(synthetic_cifar, 50))


def test_int8_meets_tolerance(int8_file: Path, fitted: torch.nn.Module, synthetic_cifar: Path) -> None:
    path = int8_file
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    meta = decode_metadata(read_metadata(path))
    assert meta["precision"] == "int8" and meta["int8"]["calibration_images"] == 50
    assert meta["weights_sha256"] == state_dict_sha256(fitted)  # metadata survives quantisation
    report = validate(path, fitted, provider="cpu", data_dir=synthetic_cifar, max_images=60, batch_sizes=(1, 7))
    assert report.passed, report.failures
    test = report.comparisons[-1]
    assert test.num_images == 60 and test.agreement >= 99.0 and test.top1_drop <= 0.5 and test.torch_top1 > 50


def test_int8_validation_needs_images(int8_file: Path, fitted: torch.nn.Module) -> None:
    with pytest.raises(ExportError, match="--data-dir"):
        validate(int8_file, fitted, provider="cpu")


@pytest.mark.skipif(cuda_driver_present(), reason="a CUDA driver is present on this machine")
def test_provider_cuda_without_cuda_fails_clearly(dynamo_file: Path, fitted: torch.nn.Module) -> None:
    with pytest.raises(ExportError, match=r"--provider cuda was requested.*use --provider cpu"):
        create_session(dynamo_file, "cuda")
    with pytest.raises(ExportError, match="--provider cuda"):
        validate(dynamo_file, fitted, provider="cuda")


def test_auto_provider_falls_back_to_cpu_without_cuda(dynamo_file: Path) -> None:
    if cuda_driver_present():
        pytest.skip("a CUDA driver is present on this machine")
    assert create_session(dynamo_file, "auto").get_providers() == ["CPUExecutionProvider"]


def test_bad_arguments_are_clear(fitted: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown exporter 'jit'"):
        to_onnx(fitted, tmp_path / "x.onnx", exporter="jit")  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="positive integer"):
        to_onnx(fitted, tmp_path / "x.onnx", batch=0)


def test_opset_is_what_the_file_says(fitted: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = to_onnx(fitted, tmp_path / "o17.onnx", opset=17, exporter="legacy")
    assert decode_metadata(read_metadata(path))["opset"] == graph_opset(onnx.load(str(path))) == 17
    # The dynamo exporter keeps opset 18 (with only a log line) when it cannot convert down; a
    # file whose graph has another opset than the one asked for is refused, not mislabelled.
    from aperture_zoo.export import onnx_export

    real = onnx_export._export_legacy
    monkeypatch.setattr(onnx_export, "_export_legacy", lambda m, x, opset, dyn: real(m, x, 17, dyn))
    with pytest.raises(ExportError, match=r"wrote opset 17 .* --opset 16 was asked.*--exporter legacy"):
        to_onnx(fitted, tmp_path / "o16.onnx", opset=16, exporter="legacy")
    assert not (tmp_path / "o16.onnx").exists()


def _lowest_ir_for_opset(opset: int) -> int:
    """Independently of the code under test: the IR version of the first onnx release with ``opset``."""
    return min(row[1] for row in onnx.helper.VERSION_TABLE if row[2] >= opset)


def test_every_precision_has_the_lowest_ir_and_only_the_domains_it_uses(
    dynamo_file: Path, int8_file: Path, fitted: torch.nn.Module
) -> None:
    fp16 = to_fp16(dynamo_file, dynamo_file.with_name("resnet10.fp16ir.onnx"))
    for path in (dynamo_file, fp16, int8_file):
        proto = onnx.load(str(path))
        used = {n.domain or "" for n in proto.graph.node}
        declared = {o.domain for o in proto.opset_import}
        assert declared == used == {""}, (path.name, declared)  # quantize_static declares eight more
        assert proto.ir_version == _lowest_ir_for_opset(graph_opset(proto)) == 8, path.name
        onnx.checker.check_model(str(path), full_check=True)
        create_session(path, "cpu")  # and onnxruntime loads what the checker passed


def test_ir_stamp_keeps_used_vendor_domains_and_newer_types() -> None:
    from onnx import TensorProto, helper

    from aperture_zoo.export.compat import stamp_lowest_ir

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Gelu", ["r"], ["y"], domain="com.microsoft")]
    opsets = [helper.make_opsetid(d, v) for d, v in (("", 18), ("ai.onnx.ml", 5), ("com.microsoft", 1))]
    proto = stamp_lowest_ir(helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=opsets, ir_version=10))
    assert {o.domain for o in proto.opset_import} == {"", "com.microsoft"} and proto.ir_version == 8
    opsets = [helper.make_opsetid("", 21)]
    proto = stamp_lowest_ir(helper.make_model(helper.make_graph(nodes[:1], "g", [x], [helper.make_tensor_value_info(
        "r", TensorProto.FLOAT, [1, 4])]), opset_imports=opsets, ir_version=11))
    assert proto.ir_version == _lowest_ir_for_opset(21) == 10
    # A float8 tensor needs IR 9 whatever the opset says: such a file keeps the exporter's stamp.
    f8 = helper.make_tensor("w", TensorProto.FLOAT8E4M3FN, [1], [1.0])
    graph = helper.make_graph(nodes[:1], "g", [x], [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 4])], [f8])
    assert stamp_lowest_ir(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)).ir_version == 10


def test_opsets_the_exporter_or_onnx_cannot_write_are_refused_before_exporting(fitted: torch.nn.Module, tmp_path: Path) -> None:
    from aperture_zoo.export.compat import highest_opset

    with pytest.raises(ExportError, match=r"^--opset 17 is out of range: the dynamo exporter writes 18\.\.\d+ .*--exporter legacy"):
        to_onnx(fitted, tmp_path / "a.onnx", opset=17)
    newest = highest_opset()
    with pytest.raises(ExportError, match=rf"^--opset {newest + 1} is out of range: onnx .* knows opsets up to {newest}"):
        export_model(fitted, tmp_path, opset=newest + 1)
    with pytest.raises(ExportError, match=r"^--opset 8 is out of range: the legacy exporter writes 9\."):
        export_model(fitted, tmp_path, opset=8, exporter="legacy")
    assert not list(tmp_path.glob("*.onnx"))


def test_fp16_with_fp16_io(dynamo_file: Path, fitted: torch.nn.Module, synthetic_cifar: Path) -> None:
    path = to_fp16(dynamo_file, dynamo_file.with_name("resnet10.fp16io.onnx"), keep_io_types=False)
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert decode_metadata(read_metadata(path))["fp16_io"] is True
    report = validate(path, fitted, provider="cpu", data_dir=synthetic_cifar, max_images=60, batch_sizes=(1, 7))
    assert report.passed, report.failures
    # The torch-free classifier feeds float16 to such a file and still returns float32.
    images = load_split("test", synthetic_cifar).images[:5]
    half = OnnxClassifier(path, provider="cpu").predict_proba(images)
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, OnnxClassifier(dynamo_file, provider="cpu").predict_proba(images), atol=2e-2)


@pytest.mark.skipif(cuda_driver_present(), reason="a CUDA driver is present on this machine")
def test_silent_cpu_fallback_is_caught(dynamo_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend the driver is there: onnxruntime is then really asked for CUDA, cannot start it, and
    # quietly hands back a CPU session. Only reading session.get_providers() catches that.
    monkeypatch.setattr(runtime, "cuda_offered", lambda: True)
    monkeypatch.setattr(runtime, "cuda_driver_present", lambda: True)
    with pytest.raises(ExportError, match=r"--provider cuda was requested but onnxruntime fell back to CPU"):
        create_session(dynamo_file, "cuda")
    assert create_session(dynamo_file, "auto").get_providers() == ["CPUExecutionProvider"]


def test_export_model_refuses_bad_requests_before_exporting(fitted: torch.nn.Module, tmp_path: Path) -> None:
    cases = [
        (dict(fp16_io=True), "--fp16-io applies to the fp16 file"),
        (dict(int8=True, data_dir=tmp_path, calibration_images=0), "--calibration-images must be at least 1"),
        (dict(max_val_images=0), "--max-val-images must be at least 1"),
        (dict(provider="gpu"), "unknown provider 'gpu'"),
    ]
    if not cuda_driver_present():
        cases.append((dict(provider="cuda"), "--provider cuda was requested"))
    for kwargs, message in cases:
        with pytest.raises(ExportError, match=message):
            export_model(fitted, tmp_path, exporter="legacy", **kwargs)  # type: ignore[arg-type]
    assert not list(tmp_path.glob("*.onnx"))


# --------------------------------------------------------------------------- validation sample, failures, progress


def _tiny() -> torch.nn.Module:
    """A 25k-parameter resnet10 derivative: validating thousands of images stays cheap on CPU."""
    torch.manual_seed(0)
    return create_model("resnet10", channels=(8, 16, 16, 32)).eval()


@pytest.fixture(scope="module")
def big_test_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,500 test images (250 per class): more than the 2,000 validated by default."""
    from cifar_synth import write_cifar10

    return write_cifar10(tmp_path_factory.mktemp("cifar_big"), n_train_per_class=5, n_test_per_class=250)


def test_validation_uses_a_stratified_2000_by_default_with_standard_errors(big_test_split: Path, tmp_path: Path) -> None:
    model = _tiny()
    result = export_model(model, tmp_path, exporter="legacy", provider="cpu", data_dir=big_test_split)
    (report,) = result.reports
    test = report.comparisons[-1]
    assert (test.inputs, test.num_images, report.test_images_total) == ("CIFAR-10 test", 2000, 2500)
    saved = json.loads(result.report_files[0].read_text())["comparisons"][-1]
    assert saved["num_images"] == 2000 and 0 < saved["agreement_se"] < 0.5
    assert saved["onnx_top1_se"] > 0 and saved["top1_drop_se"] is not None
    full = validate(result.files[0], model, provider="cpu", data_dir=big_test_split, max_images=None)
    assert full.comparisons[-1].num_images == 2500  # the whole test split on request


def test_standard_errors() -> None:
    from aperture_zoo.export.validate import binomial_se, paired_difference_se

    assert binomial_se(1880, 2000) == pytest.approx(0.53, abs=0.01)   # 94 % top-1 on 2,000 images
    assert binomial_se(2000, 2000) == pytest.approx(0.0705, abs=1e-3)  # 100 % still is not certain
    assert paired_difference_se(5, 15, 2000) == pytest.approx(0.2233, abs=1e-3)
    assert paired_difference_se(0, 0, 2000) == 0.0


def test_a_file_that_fails_validation_is_renamed_and_stale_reports_go(synthetic_cifar: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from aperture_zoo.export import validate as validate_mod
    from aperture_zoo.export.validate import Tolerance

    real = validate_mod.tolerance_for
    monkeypatch.setattr(validate_mod, "tolerance_for",  # an int8 bound no file can meet: a broken quantisation
                        lambda p, d: Tolerance(min_agreement=101.0, random_inputs_gated=False) if p == "int8" else real(p, d))
    earlier = {"passed": True, "weights_sha256": "0" * 64, "onnx_sha256": "1" * 64}  # an earlier, good export's
    (tmp_path / "tiny.int8.report.json").write_text(json.dumps(earlier))
    kw = dict(stem="tiny", exporter="legacy", provider="cpu", int8=True, data_dir=synthetic_cifar,
              calibration_images=20, max_val_images=50)
    result = export_model(_tiny(), tmp_path, **kw)
    assert not result.passed
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "tiny.int8.FAILED.onnx", "tiny.int8.FAILED.report.json", "tiny.onnx", "tiny.report.json"]
    assert result.files == [tmp_path / "tiny.onnx"] and result.failed_files == [tmp_path / "tiny.int8.FAILED.onnx"]
    saved = json.loads((tmp_path / "tiny.int8.FAILED.report.json").read_text())
    assert saved["passed"] is False and saved["renamed_from"] == "tiny.int8.onnx"
    assert saved["onnx_file"].endswith("tiny.int8.FAILED.onnx") and "renamed" in saved["note"]

    # exported again and good this time: the file is back under its name, the failed one is gone
    monkeypatch.setattr(validate_mod, "tolerance_for", lambda p, d: Tolerance(random_inputs_gated=False))
    again = export_model(_tiny(), tmp_path, **kw)
    assert again.passed and again.failed_files == []
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "tiny.int8.onnx", "tiny.int8.report.json", "tiny.onnx", "tiny.report.json"]


def test_progress_on_a_terminal_is_a_bar_with_eta() -> None:
    import io

    from rich.console import Console

    from aperture_zoo.progress import ConsoleProgress

    out = io.StringIO()
    with ConsoleProgress(Console(file=out, force_terminal=True, width=120)) as progress:
        assert progress.interactive
        progress.stage("validating tiny.onnx against PyTorch")
        progress.update(1000, 4000)
    text = out.getvalue()
    assert "validating tiny.onnx" in text and "1000/4000" in text and "ETA" in text
    plain = io.StringIO()
    with ConsoleProgress(Console(file=plain, force_terminal=False)) as progress:
        progress.stage("exporting tiny")
        progress.update(5, 10)  # no bar in a log
        progress.stage("validating tiny.onnx against PyTorch")
    lines = plain.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith("s] exporting tiny") and "validating" in lines[1]
