"""The image rule's EXIF promise: a picture is turned upright by its EXIF orientation, as browsers
do (orientation 2: mirrored left-right), and a value outside 1..8 changes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aperture_zoo.images import load_image


def _picture(path: Path, orientation: int) -> np.ndarray:
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:, :8] = (255, 0, 0)  # a red band on the left
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif)
    return pixels


def test_exif_orientation_2_is_mirrored_left_right(tmp_path: Path) -> None:
    pixels = _picture(tmp_path / "mirrored.png", 2)
    got, notices = load_image(tmp_path / "mirrored.png")
    assert np.array_equal(got, pixels[:, ::-1]) and notices == ["turned upright (EXIF orientation 2)"]


@pytest.mark.parametrize("orientation", [1, 9])
def test_an_upright_or_invalid_orientation_changes_nothing(tmp_path: Path, orientation: int) -> None:
    pixels = _picture(tmp_path / "p.png", orientation)
    got, notices = load_image(tmp_path / "p.png")
    assert np.array_equal(got, pixels) and notices == []
