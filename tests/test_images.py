"""The image rule pinned by fixed numbers: golden 32x32 outputs of odd inputs, checked in.

Every runtime (PyTorch's ``preprocess``, ``OnnxClassifier``, the browser's port) is compared with
these arrays, never only with another runtime, so a change to the rule in all of them at once
(a different filter, pass order, mode conversion or orientation) still fails here. The inputs are
drawn by formula (no random generator, no lossy encoder) except the EXIF-rotated JPEG, which is a
checked-in file so that no JPEG encoder version enters the numbers.

Run ``python tests/test_images.py`` to rewrite the goldens after a deliberate change of the rule.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aperture_zoo.images import load_image

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden_images"
EXIF_JPEG = GOLDEN / "exif6_24x40.jpg"  # stored sideways, EXIF orientation 6: upright it is 40 wide, 24 high


def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:h, 0:w]
    return x.astype(np.int64), y.astype(np.int64)


def _inputs() -> dict[str, Image.Image]:
    """The odd inputs, each exactly reproducible from integer formulas."""
    x, y = _grid(29, 31)
    grey = Image.fromarray(((x * 7 + y * 13) % 256).astype(np.uint8), "L")

    x, y = _grid(40, 24)
    palette = Image.fromarray(((x // 3 + y // 5) % 16).astype(np.uint8), "P")
    palette.putpalette([v for i in range(16) for v in ((i * 53) % 256, (i * 101) % 256, 255 - i * 16)])

    x, y = _grid(45, 45)
    rgba = np.stack([(x * 5) % 256, (y * 11) % 256, ((x + y) * 3) % 256, (x * y) % 256], -1).astype(np.uint8)

    x, y = _grid(17, 23)
    odd = np.stack([(x * 15) % 256, (y * 11) % 256, ((x * y) * 7) % 256], -1).astype(np.uint8)

    x, y = _grid(37, 301)  # height shrinks 9x, width ~1x: the case where pillow's own pass order differs
    tall = np.stack([(y * 3) % 256, (x * 7 + y) % 256, ((y // 9) * 29) % 256], -1).astype(np.uint8)

    return {"grey_29x31": grey, "palette_40x24": palette, "rgba_45x45": Image.fromarray(rgba, "RGBA"),
            "rgb_17x23": Image.fromarray(odd, "RGB"), "rgb_37x301": Image.fromarray(tall, "RGB")}


def input_files(folder: Path) -> dict[str, Path]:
    """Every odd input as a file (PNG: lossless), plus the checked-in EXIF-rotated JPEG."""
    files = {}
    for name, img in _inputs().items():
        files[name] = folder / f"{name}.png"
        img.save(files[name])
    files["exif6_jpeg"] = EXIF_JPEG
    return files


def golden(name: str) -> np.ndarray:
    return np.load(GOLDEN / f"{name}.npy", allow_pickle=False)


NAMES = ["grey_29x31", "palette_40x24", "rgba_45x45", "rgb_17x23", "rgb_37x301", "exif6_jpeg"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return input_files(tmp_path_factory.mktemp("odd"))


@pytest.mark.parametrize("name", NAMES)
def test_load_image_gives_the_golden_pixels(files: dict[str, Path], name: str) -> None:
    pixels, _ = load_image(files[name])
    want = golden(name)
    assert want.shape == (32, 32, 3) and want.dtype == np.uint8
    assert pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, want)


def test_pytorch_preprocess_gives_the_golden_pixels_normalised(files: dict[str, Path]) -> None:
    """Paths and opened pillow images alike, then the model's mean/std (aperture_zoo.preprocess)."""
    from aperture_zoo.registry import CIFAR10_MEAN, CIFAR10_STD
    from aperture_zoo.transforms import preprocess, to_pixels

    want = np.stack([golden(n) for n in NAMES])
    np.testing.assert_array_equal(to_pixels([files[n] for n in NAMES]), want)
    opened = [Image.open(files[n]) for n in NAMES]
    np.testing.assert_array_equal(to_pixels(opened), want)
    x = preprocess([files[n] for n in NAMES]).numpy()
    mean = np.asarray(CIFAR10_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR10_STD, np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(x, (want.transpose(0, 3, 1, 2) / np.float32(255) - mean) / std, atol=1e-6, rtol=0)


def test_goldens_tell_other_rules_apart(files: dict[str, Path]) -> None:
    """The goldens are no fixed point of likely mistakes: each of these rules misses them."""
    def differs(name: str, rule) -> bool:
        with Image.open(files[name]) as img:
            return not np.array_equal(np.asarray(rule(img)), golden(name))

    nearest = lambda im: im.convert("RGB").resize((32, 32), Image.Resampling.NEAREST)  # noqa: E731
    bicubic = lambda im: im.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)  # noqa: E731
    one_call = lambda im: im.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)  # noqa: E731
    assert all(differs(n, nearest) and differs(n, bicubic) for n in NAMES)
    assert differs("rgb_37x301", one_call)      # pillow's own pass order for a tall image
    assert differs("exif6_jpeg", one_call)      # not turned upright
    composited = lambda im: Image.alpha_composite(Image.new("RGBA", im.size, "white"), im).convert("RGB").resize(  # noqa: E731
        (32, 32), Image.Resampling.BILINEAR)
    assert differs("rgba_45x45", composited)    # alpha is dropped, not blended onto white
    assert not differs("rgba_45x45", one_call)  # ... which is exactly convert("RGB") then the filter


def test_exif_jpeg_is_stored_sideways(files: dict[str, Path]) -> None:
    with Image.open(files["exif6_jpeg"]) as img:
        assert img.size == (24, 40) and img.getexif().get(0x0112) == 6
    _, notices = load_image(files["exif6_jpeg"])
    assert notices[0] == "turned upright (EXIF orientation 6)"


def _write_goldens() -> None:
    """Rewrite the checked-in goldens (and the JPEG input, when missing) with the current rule."""
    import tempfile

    GOLDEN.mkdir(exist_ok=True)
    if not EXIF_JPEG.exists():
        x, y = _grid(40, 24)
        upright = np.stack([(x * 6) % 256, (y * 10) % 256, np.where(x < 10, 230, 30)], -1).astype(np.uint8)
        exif = Image.Exif()
        exif[0x0112] = 6  # viewers turn it 90° clockwise
        Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(EXIF_JPEG, quality=95, exif=exif.tobytes())
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in input_files(Path(tmp)).items():
            np.save(GOLDEN / f"{name}.npy", load_image(path)[0], allow_pickle=False)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    _write_goldens()
    print(f"goldens written to {GOLDEN}")
