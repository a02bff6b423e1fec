"""Corrupted copies of test images, for robustness figures (``aperture eval --corruptions``).

Five of the CIFAR-10-C corruptions (Hendrycks & Dietterich, ICLR 2019, ``make_cifar_c.py``) with
their five severities' parameters, generated on the fly from uint8 N x 3 x 32 x 32 images. The
original needs scikit-image, OpenCV and ImageMagick; these five need only numpy and Pillow (the
Gaussian filter and the HSV brightness shift are re-derived below, exact for these cases), so the
figures need no extra dependency. Like the original, a float result is truncated to uint8.
Pure numpy: no torch.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable

import numpy as np

from .errors import ApertureError

# Parameters per severity 1..5, as in make_cifar_c.py.
GAUSSIAN_NOISE_STD = (0.04, 0.06, 0.08, 0.09, 0.10)
GAUSSIAN_BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)
JPEG_QUALITY = (80, 65, 58, 50, 40)
CONTRAST_FACTOR = (0.75, 0.5, 0.4, 0.3, 0.15)
BRIGHTNESS_SHIFT = (0.05, 0.1, 0.15, 0.2, 0.3)
SEVERITIES = (1, 2, 3, 4, 5)


class CorruptionError(ApertureError, ValueError):
    """An unknown corruption name or a severity outside 1-5."""


def _float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float64) / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)  # truncates, like np.uint8() in the original


def gaussian_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    x = _float(images)
    return _to_uint8(x + rng.normal(size=x.shape, scale=GAUSSIAN_NOISE_STD[severity - 1]))


def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)  # scipy.ndimage.gaussian_filter's support (skimage's gaussian)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _filter_axis(x: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    r = len(kernel) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    padded = np.pad(x, pad, mode="edge")  # scipy's mode="nearest", skimage's default
    n = x.shape[axis]
    out = np.zeros_like(x)
    for i, w in enumerate(kernel):
        out += w * np.take(padded, np.arange(i, i + n), axis=axis)
    return out


def gaussian_blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    k = _gaussian_kernel(GAUSSIAN_BLUR_SIGMA[severity - 1])
    x = _filter_axis(_filter_axis(_float(images), k, 2), k, 3)  # H and W only, each channel apart
    return _to_uint8(x)


def jpeg_compression(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    out = np.empty_like(images)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).save(
            buf, "JPEG", quality=JPEG_QUALITY[severity - 1])
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("RGB")).transpose(2, 0, 1)
    return out


def contrast(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    x = _float(images)
    means = x.mean(axis=(2, 3), keepdims=True)  # per image and channel
    return _to_uint8((x - means) * CONTRAST_FACTOR[severity - 1] + means)


def brightness(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """V += c in HSV. H and S unchanged means RGB scales by V'/V (a black pixel, S = 0, turns grey)."""
    x = _float(images)
    v = x.max(axis=1, keepdims=True)
    v_new = np.clip(v + BRIGHTNESS_SHIFT[severity - 1], 0.0, 1.0)
    scaled = np.where(v > 0, x * v_new / np.where(v > 0, v, 1.0), v_new)
    return _to_uint8(scaled)


CORRUPTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "jpeg_compression": jpeg_compression,
    "contrast": contrast,
    "brightness": brightness,
}


def corrupt(images: np.ndarray, name: str, severity: int, seed: int | None = None) -> np.ndarray:
    """A corrupted copy of uint8 N x 3 x H x W ``images`` (noise seeded, by default with the severity)."""
    check_corruption(name, severity)
    rng = np.random.default_rng(severity if seed is None else seed)
    return CORRUPTIONS[name](np.asarray(images, dtype=np.uint8), severity, rng)


def check_corruption(name: str, severity: int) -> None:
    if name not in CORRUPTIONS:
        raise CorruptionError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise CorruptionError(f"corruption severity must be 1-5, got {severity} for {name}")


def parse_corruptions(spec: str | Iterable[str] | None) -> list[tuple[str, int]]:
    """``"all"`` / ``"gaussian_noise,contrast:5"`` -> [(name, severity), ...]; no severity means 1-5."""
    if spec is None:
        return []
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise CorruptionError(f"--corruptions names no corruption; use 'all' or some of {', '.join(CORRUPTIONS)}")
    out: list[tuple[str, int]] = []
    for item in items:
        name, colon, sev = item.partition(":")
        names = list(CORRUPTIONS) if name == "all" else [name]
        if colon and not sev.strip():
            raise CorruptionError(f"{item!r} has no severity after ':'; give one (e.g. {name}:3) or leave out ':' "
                                  "for all five")
        if sev:
            try:
                levels = [int(sev)]
            except ValueError:
                raise CorruptionError(f"corruption severity must be 1-5, got {sev!r} in {item!r}") from None
        else:
            levels = list(SEVERITIES)
        for n in names:
            for s in levels:
                check_corruption(n, s)
                if (n, s) not in out:
                    out.append((n, s))
    return out


def summarise(accuracy: dict[str, dict[int, float]]) -> dict[str, object]:
    """Mean over every corruption and severity, and the corruption with the lowest mean."""
    per = {n: float(np.mean(list(s.values()))) for n, s in accuracy.items() if s}
    if not per:
        return {"mean": None, "worst": None, "worst_mean": None}
    worst = min(per, key=per.__getitem__)
    every = [v for s in accuracy.values() for v in s.values()]
    return {"mean": float(np.mean(every)), "per_corruption": per, "worst": worst, "worst_mean": per[worst]}
