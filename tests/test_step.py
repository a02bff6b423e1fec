"""What one training step is made of: the learning-rate schedule and the optimizer's parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from aperture_zoo.model import create_model
from aperture_zoo.train.recipes import FAST
from aperture_zoo.train.step import build_optimizer, lr_at


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "constant"])
def test_the_schedule_warms_up_linearly_then_reaches_its_end(schedule: str) -> None:
    recipe = FAST.replace(epochs=10, lr=0.4, warmup_fraction=0.1, final_lr_fraction=0.01, schedule=schedule)
    lrs = [lr_at(recipe, step, 10) for step in range(100)]
    assert lrs[:10] == pytest.approx([0.4 * (s + 1) / 10 for s in range(10)])  # 10 warm-up steps
    done = 89 / 90  # the last step's share of the steps after the warm-up
    end = {"cosine": 0.004 + (0.4 - 0.004) * 0.5 * (1 + math.cos(math.pi * done)),
           "onecycle": 0.4 + (0.004 - 0.4) * done, "constant": 0.4}[schedule]
    assert lrs[-1] == pytest.approx(end)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # never rises after the warm-up


def test_weight_decay_falls_on_weights_only_unless_the_recipe_says_otherwise() -> None:
    model = create_model("resnet10", channels=(8, 16, 16, 32))
    groups = build_optimizer(model, FAST.replace(decay_norm_and_bias=False), torch.device("cpu")).param_groups
    assert [g["weight_decay"] for g in groups] == [FAST.weight_decay, 0.0]
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim <= 1 for p in groups[1]["params"])
    (one,) = build_optimizer(model, FAST.replace(decay_norm_and_bias=True), torch.device("cpu")).param_groups
    assert len(one["params"]) == len(list(model.parameters()))
