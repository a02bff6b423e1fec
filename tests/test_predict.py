"""Torch-free inference: OnnxClassifier and `aperture predict`'s library path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aperture_zoo.export import ImageError, OnnxFileError
from aperture_zoo.export.onnx_export import NormalizedClassifier, to_onnx
from aperture_zoo.export.predict import OnnxClassifier, load_image, softmax
from aperture_zoo.model import create_model
from aperture_zoo.registry import CIFAR10_CLASSES


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_model("resnet10").eval()
    with torch.no_grad():  # a spread-out head, so the top-k order is not a tie
        net.fc.weight.normal_(0, 0.5)
    return net


@pytest.fixture(scope="module")
def onnx_file(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return to_onnx(model, tmp_path_factory.mktemp("predict") / "resnet10.onnx", exporter="legacy")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = folder / "rgb32.png"
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(rgb)
    grey = folder / "grey.jpg"
    Image.fromarray(rng.integers(0, 256, (48, 64), dtype=np.uint8), mode="L").save(grey)
    rgba = folder / "rgba.png"
    Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8), mode="RGBA").save(rgba)
    return {"rgb": rgb, "grey": grey, "rgba": rgba}


def _torch_probs(model: torch.nn.Module, hwc: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(hwc.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    with torch.no_grad():
        return softmax(NormalizedClassifier(model)(x).numpy())


def test_predict_matches_pytorch(onnx_file: Path, images: dict[str, Path], model: torch.nn.Module) -> None:
    clf = OnnxClassifier(onnx_file, provider="cpu")
    assert clf.labels == list(CIFAR10_CLASSES)
    preds = clf.predict([images["rgb"], images["grey"]], top_k=3)
    decoded = np.stack([load_image(images["rgb"])[0], load_image(images["grey"])[0]])
    want = _torch_probs(model, decoded)
    for pred, row in zip(preds, want):
        assert len(pred.top) == 3
        assert [label for label, _ in pred.top] == [CIFAR10_CLASSES[i] for i in np.argsort(-row)[:3]]
        np.testing.assert_allclose([p for _, p in pred.top], np.sort(row)[::-1][:3], atol=1e-5)
    # random weights carry no temperature: every prediction says its probabilities are uncalibrated
    assert not clf.calibrated and preds[0].notices == [clf.describe()] and "uncalibrated" in clf.describe()
    assert preds[1].notices == ["converted L to RGB", "resized 64x48 to 32x32 (the model's input)", clf.describe()]


def test_any_mode_is_converted(images: dict[str, Path]) -> None:
    pixels, notices = load_image(images["rgba"])
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    assert notices == ["converted RGBA to RGB"]


def test_bare_network_file_is_normalised_by_the_classifier(model: torch.nn.Module, onnx_file: Path, tmp_path: Path) -> None:
    bare = to_onnx(model, tmp_path / "bare.onnx", normalize=False, exporter="legacy")
    batch = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        OnnxClassifier(bare, provider="cpu").predict_proba(batch),
        OnnxClassifier(onnx_file, provider="cpu").predict_proba(batch), atol=1e-5,
    )


# PyTorch made unimportable (as on an app's machine without it): any `import torch` raises.
_NO_TORCH = "import sys, json\nsys.modules['torch'] = None\n"
_THIRD_PARTY = (
    "third = sorted({m.split('.')[0] for m, mod in sys.modules.items() if mod is not None}"
    " - set(sys.stdlib_module_names))\n"
    "third = [m for m in third if not m.startswith('_')]\n"  # editable-install finders, __main__
)


def test_predict_path_does_not_import_torch(onnx_file: Path, images: dict[str, Path]) -> None:
    code = (
        _NO_TORCH +
        "from aperture_zoo.export.predict import OnnxClassifier\n"
        "import aperture_zoo.export as ex\n"
        "assert ex.OnnxClassifier is OnnxClassifier\n"
        f"preds = OnnxClassifier({str(onnx_file)!r}).predict([{str(images['rgb'])!r}], top_k=2)\n"
        + _THIRD_PARTY +
        "print(json.dumps({'modules': third, 'label': preds[0].label}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "torch" not in result["modules"]
    # onnxruntime, numpy and pillow only: not even the onnx package
    assert set(result["modules"]) <= {"aperture_zoo", "onnxruntime", "numpy", "PIL"}, result["modules"]
    assert result["label"] in CIFAR10_CLASSES


def test_predict_command_does_not_import_torch(onnx_file: Path, images: dict[str, Path]) -> None:
    code = (
        _NO_TORCH +
        "from aperture_zoo.cli import app\n"
        f"app(['predict', {str(images['grey'])!r}, '--onnx', {str(onnx_file)!r}, '--json'], standalone_mode=False)\n"
        + _THIRD_PARTY +
        "print(json.dumps({'torch': 'torch' in third}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"torch": False}
    assert json.loads(out.stdout[: out.stdout.rindex("\n{")])[0]["top"][0]["label"] in CIFAR10_CLASSES


def test_missing_onnx_file(tmp_path: Path) -> None:
    with pytest.raises(OnnxFileError, match=r"does not exist.*aperture export"):
        OnnxClassifier(tmp_path / "nope.onnx")


def test_not_an_onnx_file(tmp_path: Path) -> None:
    fake = tmp_path / "model.onnx"
    fake.write_text("this is not a protobuf")
    with pytest.raises(OnnxFileError, match=r"not a valid ONNX model.*aperture export"):
        OnnxClassifier(fake, provider="cpu")


def test_missing_image(onnx_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        OnnxClassifier(onnx_file, provider="cpu").predict(tmp_path / "cat.png")


def test_undecodable_image(onnx_file: Path, tmp_path: Path) -> None:
    broken = tmp_path / "cat.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match=r"could not be decoded as an image.*PNG, JPEG"):
        OnnxClassifier(onnx_file, provider="cpu").predict([broken])


def test_directory_instead_of_onnx_file(tmp_path: Path) -> None:
    with pytest.raises(OnnxFileError, match="is a directory"):
        OnnxClassifier(tmp_path)


def test_onnx_file_that_is_not_an_image_classifier(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "not_a_classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
    )
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    with pytest.raises(OnnxFileError, match=r"not an aperture_zoo export.*N x 3 x H x W.*aperture export"):
        OnnxClassifier(path, provider="cpu")


def test_float_pixels_and_fixed_batch_file(model: torch.nn.Module, onnx_file: Path, tmp_path: Path) -> None:
    batch = np.random.default_rng(2).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    dynamic = OnnxClassifier(onnx_file, provider="cpu")
    want = _torch_probs(model, batch)
    np.testing.assert_allclose(dynamic.predict_proba(batch), want, atol=1e-5)
    # float N x 3 x H x W in [0, 1] is the same input as uint8 N x H x W x 3
    floats = batch.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    np.testing.assert_allclose(dynamic.predict_proba(floats), want, atol=1e-5)
    # a fixed-batch file (4) gets 6 images as a padded 4 + 4, padding dropped
    fixed = OnnxClassifier(to_onnx(model, tmp_path / "b4.onnx", batch=4, exporter="legacy"), provider="cpu")
    assert fixed.fixed_batch == 4
    np.testing.assert_allclose(fixed.predict_proba(batch), want, atol=1e-5)
    with pytest.raises(ImageError, match="expected images shaped"):
        dynamic.predict_proba(np.zeros((2, 32), np.uint8))
    # float channels-last pixels: the hint is the transpose, not resizing (fifth hostile try, NHWC-hint family)
    with pytest.raises(ImageError, match=r"channels-last \(N x H x W x 3\): transpose them"):
        dynamic.predict_proba(floats.transpose(0, 2, 3, 1))
    with pytest.raises(ImageError, match="decode files with load_image"):
        dynamic.predict_proba(np.zeros((1, 3, 64, 64), np.float32))


def test_ir10_file_on_an_old_onnxruntime_says_to_export_again(onnx_file: Path, images: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime 1.16 refuses IR 10 files (written by exports before the lowest-IR stamp); it is
    simulated here with that release's own error message and version."""
    import onnxruntime as ort
    from typer.testing import CliRunner

    from aperture_zoo.cli import app

    def old_session(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Load model from resnet22.onnx failed:"
                           "/onnxruntime_src/onnxruntime/core/graph/model.cc:150 onnxruntime::Model::Model("
                           "ModelProto&&, ...) Unsupported model IR version: 10, max supported IR version: 9\n")

    monkeypatch.setattr(ort, "InferenceSession", old_session)
    monkeypatch.setattr(ort, "__version__", "1.16.3")
    with pytest.raises(OnnxFileError, match=r"^onnxruntime 1\.16\.3 reads ONNX IR versions up to 9, .* stamped IR 10 "
                                            r".*export it again with `aperture export NAME --onnx`"):
        OnnxClassifier(onnx_file, provider="cpu")
    result = CliRunner().invoke(app, ["predict", str(images["rgb"]), "--onnx", str(onnx_file), "--provider", "cpu"],
                                 terminal_width=400)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "onnxruntime 1.16.3" in lines[0] and "export it again" in lines[0], result.output
