"""The report's ResNet as a plain ``nn.Module``, with torchvision's state-dict layout.

Keys are ``conv1, bn1, layerK.J.{conv1,bn1,conv2,bn2,downsample.0,downsample.1}, fc`` so that the
report's own checkpoints (and torchvision-style tooling) map one to one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .errors import ApertureError
from .registry import ModelSpec, get_spec

if TYPE_CHECKING:  # pragma: no cover
    from .calibrators import Calibrator


class InputShapeError(ApertureError, ValueError):
    """An input the network cannot classify, named before it fails deep inside a layer."""


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus shortcut, then ReLU (He et al. 2015, Fig. 2)."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, conv_kernel: int, shortcut_kernel: int
    ) -> None:
        super().__init__()
        pad = conv_kernel // 2
        self.conv1 = nn.Conv2d(in_ch, out_ch, conv_kernel, stride, pad, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, conv_kernel, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, shortcut_kernel, stride, shortcut_kernel // 2, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Stem (3x3 conv, BN, ReLU), N stages of basic blocks (stride 1, 2, 2, ...), avg-pool P, fc."""

    # calibrator.apply(logits) is calibrated; set by load() from the weights (None: not known), with
    # the one-temperature fit beside it. forward() always returns raw logits: see predict_proba.
    calibrator: Calibrator | None = None
    calibrator_tta: Calibrator | None = None   # for flip-averaged logits (None: ``calibrator`` serves both)
    temperature: float | None = None
    calibration_notice: str | None = None   # said once by predict_proba: e.g. an older file's fallback

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        c0 = spec.channels[0]
        in_ch = spec.input_size[0]
        self.conv1 = nn.Conv2d(in_ch, c0, spec.conv_kernel, 1, spec.conv_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(c0)
        self.relu = nn.ReLU(inplace=True)
        prev = c0
        for i, (n_blocks, ch) in enumerate(zip(spec.blocks, spec.channels)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n_blocks):
                blocks.append(
                    BasicBlock(prev, ch, stride if j == 0 else 1, spec.conv_kernel, spec.shortcut_kernel)
                )
                prev = ch
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AvgPool2d(spec.pool_kernel)
        side = spec.input_size[1] // 2 ** (spec.num_stages - 1) // spec.pool_kernel
        # num_classes=0: no head, forward() returns the pooled features (timm's convention)
        self.fc: nn.Module = nn.Linear(prev * side * side, spec.num_classes) if spec.num_classes else nn.Identity()
        self._init_weights()

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.spec.num_stages)]

    def _init_weights(self) -> None:
        # torchvision's ResNet initialisation: He-normal convs, BN at identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x)
        x = self.relu(self.bn1(self.conv1(x)))
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.forward_features(x))
        return self.fc(torch.flatten(x, 1))

    def _check_input(self, x: Tensor) -> None:
        # Only static facts are checked, so tracing, torch.export and torch.compile see no branch
        # on data; dynamic batch sizes stay symbolic.
        if torch.jit.is_tracing():  # shapes are traced values there; export checks them itself
            return
        expected = tuple(self.spec.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise InputShapeError(
                f"{self.spec.name} expects a batch of images shaped N x {' x '.join(map(str, expected))} "
                f"(float, normalised), got {tuple(x.shape)}. {_shape_fix(tuple(x.shape), expected)}"
            )
        if not x.is_floating_point():
            raise InputShapeError(
                f"{self.spec.name} expects float input normalised with the model's mean/std, got "
                f"dtype {x.dtype}. Convert raw pixels first: ((x.float() / 255) - mean) / std with "
                "mean/std from model.spec."
            )


def _shape_fix(shape: tuple[int, ...], expected: tuple[int, ...]) -> str:
    """The one change that makes ``shape`` fit, so the hint never suggests a fix that cannot work."""
    c, h, w = expected
    size = f"{h}x{w}"
    if len(shape) == 3 and shape == expected:
        return "Add a batch dimension with x.unsqueeze(0)."
    if len(shape) == 4 and shape[1:] == (h, w, c):
        return "These are channels-last (N x H x W x C): use x.permute(0, 3, 1, 2)."
    if len(shape) == 3 and shape == (h, w, c):
        return "This is one channels-last image (H x W x C): use x.permute(2, 0, 1).unsqueeze(0)."
    return (f"Resize images to {size} with {c} channels first (aperture_zoo.preprocess takes paths, pillow "
            "images or uint8 arrays of any size and does it).")


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode while a library function runs it for the caller; every module's own mode after.

    A model left in train mode would otherwise answer with batch statistics and update its BatchNorm
    running statistics on the caller's images; a fine-tune's frozen BatchNorm keeps its mode too.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def on_device(model: nn.Module, device: str | torch.device) -> nn.Module:
    """``model`` if it already lives on ``device``, else a copy there: the caller's model never moves."""
    target = torch.device(device)
    here = next((p.device for p in model.parameters()), target)
    same = here.type == target.type and (target.index is None or here.index == target.index)
    return model if same else copy.deepcopy(model).to(target)


def model_input(model: nn.Module, x: Tensor) -> Tensor:
    """``x`` in the dtype and on the device of ``model``'s weights: float16/float64 images are converted,
    not refused deep inside a convolution. Integer pixels stay refused (they need normalising first)."""
    param = next(model.parameters(), None)
    if param is None or not x.is_floating_point():
        return x
    return x.to(device=param.device, dtype=param.dtype)


_MARGIN = 4.0


def check_normalised(model: nn.Module, x: Tensor) -> None:
    """Refuse a float batch far outside what normalised pixels can be: 0..255 floats (raw pixels) are classified
    confidently and wrongly otherwise. Images in [0, 1] normalised by the model's mean/std lie within
    [-mean/std, (1 - mean)/std] per channel (about [-2.0, 2.2] for CIFAR-10's); a margin of 4 keeps noise
    and standard-normal test tensors in, while raw 0..255 pixels (up to ~1000 once divided by std) are out."""
    if not x.is_floating_point() or x.numel() == 0 or torch.jit.is_tracing():
        return
    spec = getattr(model, "spec", None)
    if spec is None:
        return
    lo = min(-m / s for m, s in zip(spec.mean, spec.std)) - _MARGIN
    hi = max((1 - m) / s for m, s in zip(spec.mean, spec.std)) + _MARGIN
    low, high = float(x.min()), float(x.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InputShapeError("the images hold nan or inf values; pass finite pixels")
    if low >= 0.0 and high <= 1.0 and high - low >= 0.5:  # spans most of [0, 1] and never goes below the mean
        raise InputShapeError(
            f"{spec.name} expects images normalised with the model's mean/std, got values in [{low:.4g}, {high:.4g}]: "
            "pixels in [0, 1] (ToTensor() without Normalize)? A normalised image goes below 0 wherever it is darker "
            "than the mean. Normalise them first: (x - mean) / std with mean/std from model.spec, or pass paths, "
            "pillow images or uint8 arrays to aperture_zoo.preprocess")
    if low < lo or high > hi:
        raise InputShapeError(
            f"{spec.name} expects images normalised with the model's mean/std (values within about "
            f"[{lo + _MARGIN:.1f}, {hi - _MARGIN:.1f}]), got values in [{low:.4g}, {high:.4g}]: raw pixels? Normalise them first: "
            "((x / 255) - mean) / std with mean/std from model.spec, or pass paths, pillow images or uint8 "
            "arrays to aperture_zoo.preprocess")


def unwrapped(model: Any) -> Any:
    """The model inside ``nn.DataParallel``/``DistributedDataParallel`` (``.module``), which hold no spec."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    return model


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, the figure Table 1 reports."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def create_model(
    name: str | ModelSpec, num_classes: int | None = None, **overrides: Any
) -> ResNet:
    """A freshly initialised model; overrides (channels, blocks, ...) derive a new spec.

    ``create_model("resnet22", channels=(32, 64, 96, 128))`` needs no registry edit.
    """
    spec = name if isinstance(name, ModelSpec) else get_spec(name)
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if overrides:
        spec = spec.replace(**overrides)
    return ResNet(spec)
