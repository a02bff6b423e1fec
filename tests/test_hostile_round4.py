"""Hostile inputs found by an independent try after the calibration, TTA and own-data work.

Each one was a traceback, a confident wrong number, or an error naming the wrong problem; each now
ends in one line naming the problem and the fix, or in a correct answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.images import ImageError, load_image
from aperture_zoo.model import create_model
from aperture_zoo.weights import WeightsError, load_weights, save_weights
from cifar_synth import write_cifar10


def _one_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert "Traceback" not in output, output
    return lines[0] if lines else ""


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("cifar"), n_train_per_class=2, n_test_per_class=3)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_weights(create_model("resnet10", channels=(8, 16, 16, 32)), tmp_path_factory.mktemp("w") / "model.safetensors")


def test_eval_of_too_few_images_to_fit_a_temperature_reports_without_one(weights: Path, cifar: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", "resnet10", "--weights", str(weights), "--data-dir", str(cifar),
                                      "--no-download", "--subset", "5", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "no calibrator: not fitted: too few images" in result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert "ece_calibrated" not in report and set(report["reliability"]) == {"uncalibrated"}
    assert (tmp_path / "reliability.png").stat().st_size > 0


def test_negative_batchnorm_variance_is_refused_at_load(tmp_path: Path) -> None:
    model = create_model("resnet10", channels=(8, 16, 16, 32))
    with torch.no_grad():
        model.bn1.running_var[0] = -1.0  # finite, so the NaN check alone let it through to NaN logits
    path = save_weights(model, tmp_path / "model.safetensors")
    with pytest.raises(WeightsError, match="negative BatchNorm variances in 1 tensors .*bn1.running_var"):
        load_weights(create_model("resnet10", channels=(8, 16, 16, 32)), path)


def test_eval_refuses_a_model_whose_outputs_are_not_finite(cifar: Path) -> None:
    from aperture_zoo.data import load_split
    from aperture_zoo.train.evaluate import EvalError, evaluate

    model = create_model("resnet10", channels=(8, 16, 16, 32))
    with torch.no_grad():
        model.fc.bias.fill_(float("inf"))  # a module a weights check does not see (built in memory)
    with pytest.raises(EvalError, match="non-finite outputs"):
        evaluate(model, load_split("test", cifar))


def _tiny_onnx(path: Path, batch: int | str = "N", side: int = 32, probs_are_logits: bool = False) -> Path:
    """A valid classifier graph: mean over pixels -> 10 logits (and a 'probabilities' output)."""
    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [batch, 3, side, side])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])
    probs = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, 10])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 10], np.linspace(-3, 3, 30).astype(np.float32).tolist())
    nodes = [helper.make_node("ReduceMean", ["pixel_values"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["logits"]),
             helper.make_node("Identity" if probs_are_logits else "Softmax", ["logits"], ["probabilities"], **(
                 {} if probs_are_logits else {"axis": -1}))]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [logits, probs], [w]),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, {"label_names": json.dumps([f"c{i}" for i in range(10)]), "temperature": "1.0",
                                   "input": json.dumps({"shape": [batch, 3, side, side]}),
                                   "probabilities": json.dumps({"calibrated": True})})
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "ok.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("kind, message", [
    (dict(batch=0), "is not an aperture_zoo export"),
    (dict(side=30000), "is not an aperture_zoo export"),
    (dict(probs_are_logits=True), "is not probabilities"),
])
def test_predict_onnx_refuses_files_that_would_crash_or_print_wrong_numbers(kind: dict, message: str, image: Path,
                                                                             tmp_path: Path) -> None:
    path = _tiny_onnx(tmp_path / "m.onnx", **kind)
    result = CliRunner().invoke(app, ["predict", str(image), "--onnx", str(path)])
    assert result.exit_code == 2, result.output
    assert message in _one_line(result.output)


def test_demo_onnx_makes_the_checks_predict_makes_before_copying(tmp_path: Path) -> None:
    from aperture_zoo.demo import DemoError, add_onnx_files

    good = _tiny_onnx(tmp_path / "good.onnx")
    entry = add_onnx_files(tmp_path / "models", [good])[0]
    assert entry.input_size == [3, 32, 32] and entry.files[0].temperature == 1.0 and entry.files[0].calibrated
    bad = onnx.load(str(good))
    helper.set_model_props(bad, {"label_names": json.dumps(["a", "b"]), "temperature": "-1",
                                 "input": json.dumps({"shape": ["N", "a", 32, 32]})})
    onnx.save(bad, str(tmp_path / "bad.onnx"))
    with pytest.raises(DemoError, match="temperature"):
        add_onnx_files(tmp_path / "models", [tmp_path / "bad.onnx"])
    assert not (tmp_path / "models" / "bad.onnx").exists()  # nothing copied


def test_16_bit_grey_is_scaled_not_clipped_and_float_images_are_refused(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "mid.png")
    assert Image.open(tmp_path / "mid.png").mode.startswith("I")
    pixels, notices = load_image(tmp_path / "mid.png", (8, 8))
    assert (pixels == 128).all() and any("16-bit" in n for n in notices)  # convert("RGB") made it 255: white
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "half.tiff")
    with pytest.raises(ImageError, match=r"half.tiff'?: a floating-point image \(mode F\)"):
        load_image(tmp_path / "half.tiff")


@pytest.mark.parametrize("meta, message", [
    ({"test_top1": "150.0"}, "test_top1=150.0, not an accuracy between 0 and 100"),
    ({"test_top1": "NaN"}, "not an accuracy between 0 and 100"),
    ({"test_top1": '"abc"'}, "not an accuracy between 0 and 100"),
    ({"dataset": '"cifar100"', "test_top1": "90.0"}, "trained on cifar100, but its head has 10 classes"),
])
def test_card_refuses_figures_the_weights_could_not_have(meta: dict, message: str, tmp_path: Path) -> None:
    path = save_weights(create_model("resnet10"), tmp_path / "model.safetensors", metadata=meta)
    result = CliRunner().invoke(app, ["card", "resnet10", "--weights", str(path), "--out", str(tmp_path / "card")])
    assert result.exit_code == 2, result.output
    assert message in _one_line(result.output)


@pytest.mark.parametrize("args, message", [
    (["eval", "resnet10", "--pretrained", "--dataset", ""], "--dataset is empty"),
    (["eval", "resnet10", "--pretrained", "--corruption-images", "50"], "add --corruptions"),
    (["eval", "resnet10", "--pretrained", "--corruptions", "contrast:"], "no severity after ':'"),
    (["predict", "x.png", "--provider", "cuda"], "--provider cuda applies to --onnx files"),
    (["bench", "resnet10", "--min-seconds", "nan"], "--min-seconds must be >= 0"),
])
def test_options_that_were_silently_ignored_are_refused(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_a_folder_with_test_but_no_train_says_so(tmp_path: Path) -> None:
    from aperture_zoo.datasets import load_dataset
    from aperture_zoo.folder import FolderError

    for cls in ("cat", "dog"):
        (tmp_path / "test" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "test" / cls / "a.png")
    with pytest.raises(FolderError, match="has test/ but no train/"):
        load_dataset(str(tmp_path))


def test_samples_show_must_name_a_model_that_runs() -> None:
    result = CliRunner().invoke(app, ["samples", "resnet10", "--show", "resnet22"])
    assert result.exit_code == 2 and "--show resnet22 is not among the models run" in result.output
    result = CliRunner().invoke(app, ["samples", "--show", "resnet99"])
    assert result.exit_code == 2 and "resnet99" in result.output and "Traceback" not in result.output
