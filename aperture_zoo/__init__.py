"""aperture_zoo: the compact CIFAR-10 ResNets of the Residual Network Design Mini-Project report.

>>> import aperture_zoo
>>> model = aperture_zoo.load("resnet22", pretrained=True)
>>> logits = model(aperture_zoo.preprocess(["cat.png"], model))
>>> probs = aperture_zoo.predict_proba(model, ["cat.png"])  # calibrated: softmax(logits / T)

The registry is imported eagerly (it is pure Python); everything that needs torch is imported on
first use, so ``aperture --help`` and torch-free ONNX inference stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from .catalog import Weights, get_weights, list_pretrained, register_weights
from .registry import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    ModelSpec,
    UnknownModelError,
    get_spec,
    list_models,
    register,
)

from ._version import __version__

_LAZY = {
    "create_model": "model",
    "count_parameters": "model",
    "ResNet": "model",
    "InputShapeError": "model",
    "save_weights": "weights",
    "load_weights": "weights",
    "read_metadata": "weights",
    "WeightsError": "weights",
    "load": "pretrained",
    "resolve_weights": "pretrained",
    "NoPretrainedWeightsError": "pretrained",
    "preprocess": "transforms",
    "classify_samples": "samples",
    "predict_proba": "predict",
}

__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "ModelSpec", "UnknownModelError", "Weights",
    "get_spec", "get_weights", "list_models", "list_pretrained", "register", "register_weights", "__version__", *_LAZY,
]

if TYPE_CHECKING:  # pragma: no cover
    from .model import InputShapeError, ResNet, count_parameters, create_model
    from .predict import predict_proba
    from .pretrained import NoPretrainedWeightsError, load, resolve_weights
    from .samples import classify_samples
    from .transforms import preprocess
    from .weights import WeightsError, load_weights, read_metadata, save_weights


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY, __all__)
