"""The image rule's promises: a picture is turned upright by its EXIF orientation, as browsers
do (orientation 2: mirrored left-right), and a value outside 1..8 changes nothing; 16-bit grey is
scaled to 8 bits over its whole range (white stays white)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aperture_zoo.images import ImageError, load_image


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


def test_16_bit_grey_is_scaled_to_8_bits_over_its_whole_range(tmp_path: Path) -> None:
    levels = np.array([0, 128, 257 * 128, 65407, 65408, 65535], np.uint16)  # black ... white, and the rounding edges
    Image.fromarray(np.tile(levels, (32, 1)).astype(np.uint16)).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    got, notices = load_image(tmp_path / "grey16.png", size=(6, 32))
    want = (levels.astype(np.int64) * 255 + 32767) // 65535  # nearest 8-bit level, computed apart
    assert np.array_equal(got[0, :, 0], want) and (got == got[..., :1]).all()  # grey: R = G = B
    assert any("16-bit" in n for n in notices)


@pytest.mark.parametrize("outside", [-1, 65536])
def test_integer_grey_outside_the_16_bit_range_is_refused(tmp_path: Path, outside: int) -> None:
    values = np.full((32, 32), 1000, np.int32)
    values[0, 0] = outside  # one pixel with no 8-bit equivalent
    Image.fromarray(values, "I").save(tmp_path / "wide.tiff")
    with pytest.raises(ImageError, match="outside 0..65535"):
        load_image(tmp_path / "wide.tiff")
