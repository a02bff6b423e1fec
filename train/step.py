"""One training step and what it is made of: network, optimizer, learning-rate schedule.

The learning rate is a pure function of the global step (``lr_at``), so a resumed run needs no
scheduler state; ``initial_state`` builds a new run's seeded network, optimizer and EMA (or takes
them back from a checkpoint) and ``network`` wraps it for DDP and ``torch.compile``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aperture_zoo.model import create_model
from aperture_zoo.registry import ModelSpec

from . import distributed as D
from .augment import Batch
from .recipes import Recipe
from .state import EMA, RunState


def lr_at(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Learning rate of global step ``step``: a pure function, so resuming needs no scheduler state."""
    total = recipe.epochs * steps_per_epoch
    warm = int(round(recipe.warmup_fraction * total))
    peak, final = recipe.lr, recipe.lr * recipe.final_lr_fraction
    if step < warm:
        return peak * (step + 1) / warm
    if recipe.schedule == "constant":
        return peak
    progress = (step - warm) / max(total - warm, 1)
    if recipe.schedule == "onecycle":
        return peak + (final - peak) * progress
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def build_optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """The recipe's optimizer; fused (or multi-tensor) kernels on CUDA, weight decay on weights only."""
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.decay_norm_and_bias:
        groups: list[dict[str, Any]] = [{"params": params, "weight_decay": recipe.weight_decay}]
    else:
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": recipe.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
    cuda = device.type == "cuda"
    if recipe.optimizer == "sgd":
        nesterov = recipe.nesterov and recipe.momentum > 0
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=nesterov,
                               fused=True if cuda else None)
    if recipe.optimizer == "adadelta":
        return torch.optim.Adadelta(groups, lr=recipe.lr, foreach=True if cuda else None)
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(recipe.momentum, 0.999), fused=True if cuda else None)


class TrainStep:
    """Forward, soft-target cross-entropy, backward and optimizer step for one (local) batch.

    Returns the mean loss and the number of correct top-1 predictions as device tensors.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, autocast_dtype: torch.dtype | None):
        self.model = model
        self.optimizer = optimizer
        self.autocast_dtype = autocast_dtype

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor]:
        dev = batch.inputs.device
        with torch.autocast(dev.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            logits = self.model(batch.inputs)
        logits = logits.float()
        loss = torch.sum(-batch.targets * F.log_softmax(logits, dim=1), dim=1).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        correct = (logits.detach().argmax(1) == batch.labels).sum()
        return loss.detach(), correct


def initial_state(spec: ModelSpec, recipe: Recipe, seed: int, info: D.DistInfo, device: torch.device,
                  ckpt: dict[str, Any] | None, prepare: Callable[[nn.Module], None] | None = None) -> RunState:
    """A new run's network (seeded), optimizer and EMA on ``device``, or those of ``ckpt``."""
    if device.type == "cuda":  # fixed shapes (the last partial batch is dropped): autotuning pays
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(seed)
    model: nn.Module = create_model(spec)
    if prepare is not None:  # init weights, frozen backbone (dataset_run.py): before the optimizer sees them
        prepare(model)
    if info.enabled and device.type == "cuda" and recipe.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    state = RunState(model, build_optimizer(model, recipe, device),
                     EMA(model, recipe.ema_decay) if recipe.ema_decay > 0 else None,
                     sums=torch.zeros(3, device=device, dtype=torch.float64))
    if ckpt is not None:
        state.load(ckpt, info.is_main)
    return state


def network(model: nn.Module, info: D.DistInfo, device: torch.device, compile: bool) -> nn.Module:
    """What runs the forward pass: ``model`` under DDP on several ranks, compiled if asked."""
    net = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(net) if compile else net  # type: ignore[return-value]
