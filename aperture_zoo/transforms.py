"""Preprocessing for the PyTorch models, like torchvision's ``weights.transforms()``.

The PyTorch model takes *normalised* input; the exported ONNX graph takes pixels in [0, 1] and
normalises inside. ``preprocess`` turns image files, pillow images or uint8 arrays into the
model's input with the same decoding rule as the ONNX path (``aperture_zoo.images``) and the
model's own mean/std, so both runtimes see the same picture.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch

from .errors import ApertureError
from .images import ImageError, fit_image, load_image
from .model import ResNet, unwrapped
from .registry import CIFAR10_MEAN, CIFAR10_STD, ModelSpec
from .terminal import fragment

ImageLike = Union[str, os.PathLike, np.ndarray, Any]  # a path, a uint8 H x W x 3 array or a pillow image


def to_pixels(images: ImageLike | Sequence[ImageLike], size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """uint8 N x H x W x 3 RGB at ``size`` from paths, pillow images or uint8 arrays."""
    from PIL import Image

    if isinstance(images, np.ndarray) and images.ndim == 4:
        items: list[Any] = list(images)
    elif isinstance(images, (str, os.PathLike, np.ndarray)) or isinstance(images, Image.Image):
        items = [images]
    else:
        items = list(images)
    if not items:
        raise ImageError("no images given; pass a path, a pillow image or a uint8 H x W x 3 array")
    out = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            out.append(load_image(item, size)[0])
        elif isinstance(item, Image.Image):
            out.append(fit_image(item, size)[0])
        elif isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 3 and item.shape[-1] == 3:
            out.append(fit_image(Image.fromarray(item), size)[0])
        else:
            kind = f"array {item.dtype} {item.shape}" if isinstance(item, np.ndarray) else type(item).__name__
            raise ImageError(f"cannot use {kind} as an image; pass a path, a pillow image or a uint8 H x W x 3 array")
    return np.stack(out)


class ModelArgumentError(ApertureError, TypeError):
    """Something other than a model or its spec given as the model."""


def _spec_of(model: Any) -> ModelSpec | None:
    """The spec of a model, also wrapped (DataParallel/DDP hold none; a torch.compile module forwards it).

    A name is refused, not looked up: a model trained on other images has its own mean/std, which
    its name does not carry."""
    if model is None or isinstance(model, ModelSpec):
        return model
    spec = getattr(unwrapped(model), "spec", None)
    if isinstance(spec, ModelSpec):
        return spec
    if isinstance(model, str):
        name = fragment(model[:80])
        raise ModelArgumentError(f"preprocess(images, model) got the name '{name}', not a model; pass the model itself, "
                                 f"e.g. model = aperture_zoo.load('{name}', pretrained=True) (its normalisation comes "
                                 "from its weights, which a name does not carry)")
    raise ModelArgumentError(f"preprocess(images, model) got type {type(model).__name__}, not a model; pass an aperture_zoo "
                             "model (in DataParallel or torch.compile too) or its .spec")


def preprocess(images: ImageLike | Sequence[ImageLike], model: ResNet | ModelSpec | None = None) -> torch.Tensor:
    """The normalised float32 N x 3 x H x W tensor ``model`` takes (CIFAR-10 statistics by default)."""
    spec = _spec_of(model)
    mean, std = (spec.mean, spec.std) if spec is not None else (CIFAR10_MEAN, CIFAR10_STD)
    size = (spec.input_size[2], spec.input_size[1]) if spec is not None else (32, 32)
    x = torch.from_numpy(to_pixels(images, size)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
