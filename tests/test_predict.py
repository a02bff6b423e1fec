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
    assert preds[0].notices == []
    assert preds[1].notices == ["converted L to RGB", "resized 64x48 to 32x32 (the model's input)"]


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


def test_predict_path_does_not_import_torch(onnx_file: Path, images: dict[str, Path]) -> None:
    code = (
        "import sys, json\n"
        "from aperture_zoo.export.predict import OnnxClassifier\n"
        "import aperture_zoo.export as ex\n"
        "assert ex.OnnxClassifier is OnnxClassifier\n"
        f"preds = OnnxClassifier({str(onnx_file)!r}).predict([{str(images['rgb'])!r}], top_k=2)\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'label': preds[0].label}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["torch"] is False
    assert result["label"] in CIFAR10_CLASSES


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
