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

import io
import os
from pathlib import Path

import numpy as np

from .errors import ApertureError


class ImageError(ApertureError, ValueError):
    """An image file that is missing or cannot be decoded."""


class ImageTooLargeError(ImageError):
    """An image that declares more pixels than the decoder accepts (a decompression bomb, or a huge scan)."""


# Far above any photo a classifier of 32x32 inputs needs, far below what exhausts memory: a small
# file can declare 30000x30000 pixels (a "decompression bomb"), refused before it is decoded.
MAX_PIXELS = 64_000_000


class _Named(io.BytesIO):
    """Bytes read by the caller, as a file object that pillow's errors name by its path (not a memory address)."""

    def __init__(self, data: bytes, path: Path) -> None:
        super().__init__(data)
        self.path = str(path)

    def __repr__(self) -> str:
        return repr(self.path)


def load_image(path: str | os.PathLike[str], size: tuple[int, int] = (32, 32),
               data: bytes | None = None) -> tuple[np.ndarray, list[str]]:
    """An image file as uint8 H x W x 3 at ``size`` (width, height), with notices for what was changed.

    The one guarded decoder: a missing path, a special file (FIFO, device), an image declaring more
    than ``MAX_PIXELS`` pixels, or anything pillow cannot decode is an ``ImageError`` naming the file.
    ``data``: the file's bytes, already read (and hashed) by the caller, decoded instead of reading
    ``path`` again, so what is decoded is exactly what was hashed.
    """
    import warnings

    from PIL import Image

    path = Path(path)
    if data is None and not path.is_file():  # also refuses FIFOs and devices, which would block or never end
        what = "is not a regular file" if path.exists() else "does not exist"
        raise ImageError(f"image {str(path)!r} {what}; check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path if data is None else _Named(data, path)) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageTooLargeError(
                        f"{str(path)!r} declares {w}x{h} pixels, more than the {MAX_PIXELS:,} this decoder "
                        "accepts (a damaged or hostile file?); downscale it first"
                    )
                img.load()
                try:
                    return fit_image(img, size)
                except ImageError as exc:  # e.g. a float image: name the file
                    raise ImageError(f"{str(path)!r}: {exc}") from None
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # pillow's own, larger limit
        raise ImageTooLargeError(
            f"{str(path)!r} declares more than {MAX_PIXELS:,} pixels, more than this decoder accepts (a "
            "damaged or hostile file?); downscale it first"
        ) from None
    except Exception as exc:  # noqa: BLE001 - pillow's decoders raise many kinds (OSError, SyntaxError, struct.error, ...)
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ImageError(
            f"{str(path)!r} could not be decoded as an image ({detail}); pass a PNG, JPEG or other "
            "format pillow reads"
        ) from None


def load_images(
    paths: list[str | os.PathLike[str]], size: tuple[int, int] = (32, 32)
) -> tuple[list[tuple[int, np.ndarray, list[str]]], list[tuple[int, ImageError]]]:
    """Decode many files, collecting failures instead of stopping at the first one.

    Returns ``(decoded, failed)``: ``(index, pixels, notices)`` for every readable image and
    ``(index, error)`` for every other, so a batch caller answers all it can and lists the rest.
    """
    decoded, failed = [], []
    for i, p in enumerate(paths):
        try:
            pixels, notices = load_image(p, size)
        except ImageError as exc:
            failed.append((i, exc))
        else:
            decoded.append((i, pixels, notices))
    return decoded, failed


def notice_summary(notices: list[list[str]]) -> str | None:
    """One line for a batch's per-image notices: each distinct change once, with how many images it concerns.

    A folder of small grey pictures would otherwise print two lines per image; the per-image list
    stays in ``--json``.
    """
    counts: dict[str, int] = {}
    for per_image in notices:
        for notice in per_image:
            counts[notice] = counts.get(notice, 0) + 1
    if not counts:
        return None
    changed = sum(1 for per_image in notices if per_image)
    parts = "; ".join(f"{text} ({n} image{'s' if n != 1 else ''})" for text, n in counts.items())
    return f"{changed} of {len(notices)} images were changed to fit the model: {parts}"


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
    img = _to_8bit(img, notices)
    if img.mode != "RGB":  # type: ignore[attr-defined]
        notices.append(f"converted {img.mode} to RGB")  # type: ignore[attr-defined]
        img = img.convert("RGB")  # type: ignore[attr-defined]
    if img.size != size:  # type: ignore[attr-defined]
        w, h = img.size  # type: ignore[attr-defined]
        notices.append(f"resized {w}x{h} to {size[0]}x{size[1]} (the model's input)")
        img = resize_bilinear(img, size)
    return np.asarray(img, dtype=np.uint8), notices


_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_8bit(img: "object", notices: list[str]) -> "object":
    """16-bit grey scaled to 8 bits (pillow's convert would clip mid-grey to white); float refused.

    A float image has no fixed scale (0..1? 0..255?), so guessing one would give a confident answer
    on pixels that are not the picture.
    """
    from PIL import Image

    mode = img.mode  # type: ignore[attr-defined]
    if mode == "F":
        raise ImageError("a floating-point image (mode F) has no fixed 0..255 scale; save it as an 8-bit PNG or "
                         "JPEG first")
    if mode not in _16BIT_MODES:
        return img
    values = np.asarray(img, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageError(f"a {mode} image with values outside 0..65535 has no 8-bit equivalent; save it as an 8-bit "
                         "PNG or JPEG first")
    notices.append(f"scaled {mode} (16-bit or integer grey, 0..65535) to 8 bits")
    return Image.fromarray(((values + 128) // 257).astype(np.uint8), "L")
