"""int8 calibration sees training images only: the test split it is validated on never leaks in."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from aperture_zoo.data import load_split
from aperture_zoo.export import pipeline
from aperture_zoo.export.quantize import calibration_pixels
from aperture_zoo.model import create_model


def _hashes(uint8_images: np.ndarray) -> set[str]:
    return {hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest() for img in uint8_images}


def _as_uint8(pixels: np.ndarray) -> np.ndarray:
    """Calibration pixels in [0, 1] back to the file's bytes (exact: x / 255 * 255 rounds home)."""
    return np.rint(pixels * 255.0).astype(np.uint8)


@pytest.fixture(scope="module")
def splits(synthetic_cifar: Path) -> tuple[set[str], set[str]]:
    train, test = _hashes(load_split("train", synthetic_cifar).images), _hashes(load_split("test", synthetic_cifar).images)
    assert len(train) == 500 and len(test) == 200 and not train & test  # the synthetic splits are distinct
    return train, test


def test_calibration_images_come_from_the_training_split(synthetic_cifar: Path, splits) -> None:
    train, test = splits
    got = _hashes(_as_uint8(calibration_pixels(synthetic_cifar, 100)))
    assert len(got) == 100 and got <= train and not got & test


def test_export_calibrates_int8_on_training_images(synthetic_cifar: Path, splits, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """What export_model hands the quantiser, not only what calibration_pixels returns."""
    train, test = splits
    seen: list[np.ndarray] = []

    def record(src, dst, calibration, **kw):
        seen.append(calibration)
        return Path(src)

    monkeypatch.setattr(pipeline, "to_int8", record)
    torch.manual_seed(0)
    model = create_model("resnet10", channels=(8, 16, 16, 32)).eval()
    pipeline.export_model(model, tmp_path, exporter="legacy", int8=True, data_dir=synthetic_cifar,
                          calibration_images=60, run_validation=False)
    (calibration,) = seen
    assert calibration.shape == (60, 3, 32, 32) and 0.0 <= calibration.min() and calibration.max() <= 1.0
    got = _hashes(_as_uint8(calibration))
    assert len(got) == 60 and got <= train and not got & test


def test_fp16_file_passes_the_full_checker_with_float32_io(tmp_path: Path) -> None:
    """The converter appends its input Casts last; the file must still be in topological order."""
    import onnx

    from aperture_zoo.export.onnx_export import to_onnx
    from aperture_zoo.export.quantize import to_fp16

    torch.manual_seed(0)
    model = create_model("resnet10", channels=(8, 16, 16, 32)).eval()
    path = to_fp16(to_onnx(model, tmp_path / "small.onnx", exporter="legacy"), tmp_path / "small.fp16.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
