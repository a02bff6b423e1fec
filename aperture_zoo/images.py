"""The one image rule shared by every inference path: files -> uint8 RGB at the model's size.

PyTorch (``aperture_zoo.preprocess``), ONNX (``OnnxClassifier``) and the web demo
(``apps/web/preprocess.js``, a bit-exact port) all decode an image the same way, so a picture gets
the same prediction whichever runtime classifies it: decode; turn upright by the EXIF orientation,
as browsers do; ``convert("RGB")`` (alpha dropped, grey replicated, palette expanded; no colour
management); :func:`resize_bilinear` to 32x32 (the aspect ratio is not kept: CIFAR-10 images are
square); the model input is these bytes / 255. Only numpy and pillow: the ONNX path imports this
without torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import ApertureError


class ImageError(ApertureError, ValueError):
    """An image file that is missing or cannot be decoded."""


def load_image(path: str | os.PathLike[str], size: tuple[int, int] = (32, 32)) -> tuple[np.ndarray, list[str]]:
    """An image file as uint8 H x W x 3 at ``size`` (width, height), with notices for what was changed."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image {str(path)!r} does not exist or is not a file; check the path")
    try:
        with Image.open(path) as img:
            img.load()
            return fit_image(img, size)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(
            f"{str(path)!r} could not be decoded as an image ({exc}); pass a PNG, JPEG or other "
            "format pillow reads"
        ) from None


_EXIF_ORIENTATION = 0x0112


def resize_bilinear(img: "object", size: tuple[int, int]) -> "object":
    """Pillow's BILINEAR resize, always as a horizontal pass then a vertical pass.

    Pillow's filter is exactly reproducible (fixed-point arithmetic), but recent Pillow versions
    make one ``resize`` call run the vertical pass first when the height shrinks much more than
    the width, which rounds differently. Fixing the order keeps predictions identical across
    Pillow versions and to the browser demo, which ports both passes.
    """
    from PIL import Image

    if img.size[0] != size[0]:  # type: ignore[attr-defined]
        img = img.resize((size[0], img.size[1]), Image.Resampling.BILINEAR)  # type: ignore[attr-defined]
    if img.size[1] != size[1]:  # type: ignore[attr-defined]
        img = img.resize(size, Image.Resampling.BILINEAR)  # type: ignore[attr-defined]
    return img


def fit_image(img: "object", size: tuple[int, int] = (32, 32)) -> tuple[np.ndarray, list[str]]:
    """A decoded pillow image as uint8 H x W x 3 RGB at ``size``, with notices for what was changed."""
    from PIL import ImageOps

    notices = []
    orientation = img.getexif().get(_EXIF_ORIENTATION, 1)  # type: ignore[attr-defined]
    if orientation in range(2, 9):
        notices.append(f"turned upright (EXIF orientation {orientation})")
        img = ImageOps.exif_transpose(img)
    if img.mode != "RGB":  # type: ignore[attr-defined]
        notices.append(f"converted {img.mode} to RGB")  # type: ignore[attr-defined]
        img = img.convert("RGB")  # type: ignore[attr-defined]
    if img.size != size:  # type: ignore[attr-defined]
        w, h = img.size  # type: ignore[attr-defined]
        notices.append(f"resized {w}x{h} to {size[0]}x{size[1]} (the model's input)")
        img = resize_bilinear(img, size)
    return np.asarray(img, dtype=np.uint8), notices
