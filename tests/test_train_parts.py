"""The pieces ``fit`` is made of: batch stream, run state, sync clock, progress output, device facts."""

from __future__ import annotations

import pytest
import torch

from aperture_zoo.train import apply_overrides, get_recipe
from aperture_zoo.train.augment import AugmentConfig
from aperture_zoo.train.device import autocast_dtype, device_name

RECIPE = apply_overrides(get_recipe("fast"), ["epochs=2", "batch_size=50", "cutout=8", "ema_decay=0.9"])


def test_augment_config_from_recipe_takes_every_augmentation_field() -> None:
    recipe = RECIPE.replace(crop_padding=2, pad_mode="zeros", flip=False, mixup_alpha=0.2, label_smoothing=0.05)
    assert AugmentConfig.from_recipe(recipe) == AugmentConfig(2, "zeros", False, 8, 0.2, 0.05)


# ----------------------------------------------------------------- device facts


def test_precision_auto_is_bf16_on_cuda_and_fp32_on_cpu() -> None:
    assert autocast_dtype("auto", "cpu") is None and autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16 and autocast_dtype("fp32", "cuda") is None
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        autocast_dtype("fp16", "cpu")


def test_device_names() -> None:
    assert device_name("cpu") == "cpu" and device_name(torch.device("cpu")) == "cpu"
    assert device_name("cpu", detail=True).startswith("cpu (") and "threads)" in device_name("cpu", detail=True)
