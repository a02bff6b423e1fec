"""Calibrated probabilities from a PyTorch model in one call, and ``aperture predict`` without ONNX.

``model(x)`` returns raw logits, like every torchvision/timm classifier; ``predict_proba(model, x)``
is the one place that turns them into probabilities an app can threshold: ``calibrator.apply`` of
the logits, with the calibrator ``load()`` attached from the weights (``get_weights(tag).calibrator``
for the published ones), the same numpy map the ONNX graph and every figure use. Optionally
averaged with the mirrored image (flip test-time augmentation) first.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .calibrators import Calibrator, TemperatureError, check_temperature, temperature_argument
from .errors import ApertureError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .model import ResNet

TTA_MODES: tuple[str, ...] = ("none", "flip")


class TTAError(ApertureError, ValueError):
    """An unknown test-time augmentation."""


def check_tta(tta: str | bool | None) -> bool:
    """``"flip"`` -> True, ``"none"``/None -> False; anything else is a one-line error."""
    if tta is None or isinstance(tta, bool):
        return bool(tta)
    if tta not in TTA_MODES:
        raise TTAError(f"--tta must be 'flip' or 'none', got {tta!r}")
    return tta == "flip"


class NoHeadError(ApertureError, ValueError):
    """Class probabilities asked of a features model (``num_classes=0``): it has no classes."""


def check_head(model: ResNet) -> None:
    """Refuse a model without a head: a softmax of its pooled features would look like probabilities."""
    if model.spec.num_classes == 0:
        raise NoHeadError(
            f"this {model.spec.name} has no classification head (num_classes=0: it returns {model.spec.channels[-1]} "
            "pooled features, not class scores), so it has no class probabilities; load it with a head (leave out "
            "num_classes=0), or use model(x) for the features")


class UncalibratedWarning(UserWarning):
    """Probabilities from weights without a temperature: the plain softmax (T = 1), as ``aperture predict`` gives."""


def tta_logits(model: ResNet, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Logits, averaged with the mirrored image's when ``tta`` (what ``eval --tta`` measures).

    Runs ``model`` in eval mode and gives it back in the mode it had; float16/float64 input is converted
    to the model's dtype and device.
    """
    from .model import evaluating, model_input

    x = model_input(model, x)
    with evaluating(model):
        logits = model(x)
        return 0.5 * (logits + model(x.flip(3))) if tta else logits


def model_calibrator(model: ResNet, temperature: float | None = None,
                     calibrator: Calibrator | None = None, tta: bool = False) -> Calibrator:
    """``calibrator`` or ``temperature`` if given, else the model's own (for flip-averaged logits with
    ``tta``, its ``calibrator_tta`` when it has one); one temperature of 1 (the plain softmax) when
    none is known, said once per model with an ``UncalibratedWarning`` (the CLI does the same).

    A model whose file records only a temperature (from before calibrators) uses it, and says so
    once (a ``CalibrationNotice`` warning)."""
    check_head(model)
    if calibrator is not None:
        if not isinstance(calibrator, Calibrator):
            raise TemperatureError(f"calibrator must be an aperture_zoo.Calibrator, got {type(calibrator).__name__}")
        return calibrator
    if temperature is not None:
        return Calibrator("temperature", temperature_argument(temperature))
    own = (tta and getattr(model, "calibrator_tta", None)) or getattr(model, "calibrator", None)
    if own is None and model.temperature is not None:  # set by hand, or an older file's
        own = Calibrator("temperature", check_temperature(model.temperature))
    if own is None:
        if not getattr(model, "_said_uncalibrated", False):
            warnings.warn(f"no calibrator is known for these {model.spec.name} weights (runs trained without "
                          "--val-split carry none): the probabilities are the plain softmax (T = 1), uncalibrated. "
                          "Pass temperature=T, or fit one with aperture_zoo.calibration.fit_calibrator on held-out "
                          "logits", UncalibratedWarning, stacklevel=3)
            model._said_uncalibrated = True
        return Calibrator("temperature", 1.0)
    notice = getattr(model, "calibration_notice", None)
    if notice:
        warnings.warn(notice, CalibrationNotice, stacklevel=3)
        model.calibration_notice = None  # once
    return own


class CalibrationNotice(UserWarning):
    """The probabilities come from a fallback (an older file's one temperature); said once per model."""


def describe_probabilities(model: ResNet, tta: bool = False) -> str:
    """What ``predict_proba`` gives for ``model``: calibrated (its calibrator, or an older file's
    temperature, said so) or the plain softmax."""
    check_head(model)
    own = (tta and getattr(model, "calibrator_tta", None)) or getattr(model, "calibrator", None)
    if own is None and model.temperature is None:
        return "uncalibrated probabilities (no calibrator is known for these weights: plain softmax, T = 1)"
    if own is None:
        own = Calibrator("temperature", check_temperature(model.temperature))
    notice = getattr(model, "calibration_notice", None)
    return f"calibrated probabilities ({own.describe()})" + (f"; {notice}" if notice else "")


def predict_proba(model: ResNet, images: Any, temperature: float | None = None,
                  tta: str | bool = False, calibrator: Calibrator | None = None) -> torch.Tensor:
    """Calibrated class probabilities, N x classes (float32): the model's calibrator applied to its
    logits, no gradient. The calibrator keeps the prediction: the top logit's class has the top
    probability.

    ``images``: a normalised N x 3 x H x W tensor (what ``preprocess`` returns; float16/float64 are
    converted), or image paths, pillow images or uint8 arrays (preprocessed here). ``tta="flip"``
    averages the logits of each image and its mirror first. ``temperature``/``calibrator`` override
    the model's own. The model runs in eval mode whatever mode it is in (its BatchNorm statistics
    never change) and is given back in that mode.
    """
    import torch

    from .model import check_normalised, unwrapped
    from .transforms import preprocess

    model = unwrapped(model)
    flip = check_tta(tta)
    cal = model_calibrator(model, temperature, calibrator, flip)
    if isinstance(images, torch.Tensor):
        check_normalised(model, images)
    x = images if isinstance(images, torch.Tensor) else preprocess(images, model)
    with torch.no_grad():
        logits = tta_logits(model, x, flip)
    return torch.from_numpy(cal.apply(logits.float().cpu().numpy())).to(device=logits.device, dtype=torch.float32)


def classify(model: ResNet, paths: Sequence[str | os.PathLike[str]], top_k: int = 3,
             tta: str | bool = False) -> tuple[list[dict[str, Any]], list[tuple[str, Exception]]]:
    """Top-k calibrated (class, probability) per readable image file, shaped like ``Prediction.to_dict()``,
    and ``(path, error)`` for each file that could not be read (a batch answers all it can)."""
    from .images import ImageError, load_images
    from .model import unwrapped
    from .transforms import preprocess

    if top_k < 1:
        raise ImageError(f"--top-k must be at least 1, got {top_k}")
    model = unwrapped(model)
    check_head(model)
    size = (model.spec.input_size[2], model.spec.input_size[1])
    paths = list(paths)
    decoded, failed = load_images(paths, size)
    failures: list[tuple[str, Exception]] = [(str(paths[i]), exc) for i, exc in failed]
    if not decoded:
        return [], failures
    import numpy as np

    probs = predict_proba(model, preprocess(np.stack([img for _, img, _ in decoded]), model), tta=tta).cpu().numpy()
    k = min(top_k, probs.shape[1])
    out = []
    for (i, _, notices), row in zip(decoded, probs):
        order = np.argsort(-row)[:k]
        out.append({"image": str(paths[i]), "top": [{"label": model.spec.label_names[j], "probability": float(row[j])}
                                                    for j in order], "notices": list(notices)})
    return out, failures
