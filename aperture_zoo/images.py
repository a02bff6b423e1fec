"""The one image rule shared by every inference path: files -> uint8 RGB at the model's size.

PyTorch (``aperture_zoo.preprocess``), ONNX (``OnnxClassifier``) and the web demo all decode an
image the same way, so a picture gets the same prediction whichever runtime classifies it:
any mode becomes RGB (pillow's ``convert``), any size becomes 32x32 with pillow's bilinear
resampling (the aspect ratio is not kept: CIFAR-10 images are square), and pixels are then
scaled to [0, 1]. Only numpy and pillow: the ONNX path imports this without torch.
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


def fit_image(img: "object", size: tuple[int, int] = (32, 32)) -> tuple[np.ndarray, list[str]]:
    """A decoded pillow image as uint8 H x W x 3 RGB at ``size``, with notices for what was changed."""
    from PIL import Image

    notices = []
    if img.mode != "RGB":  # type: ignore[attr-defined]
        notices.append(f"converted {img.mode} to RGB")  # type: ignore[attr-defined]
        img = img.convert("RGB")  # type: ignore[attr-defined]
    if img.size != size:  # type: ignore[attr-defined]
        w, h = img.size  # type: ignore[attr-defined]
        notices.append(f"resized {w}x{h} to {size[0]}x{size[1]} (the model's input)")
        img = img.resize(size, Image.Resampling.BILINEAR)  # type: ignore[attr-defined]
    return np.asarray(img, dtype=np.uint8), notices
