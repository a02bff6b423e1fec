"""Everything a resumable run is, as one object: ``RunState`` converts to and from a checkpoint.

A run continues exactly from its network, optimizer and EMA tensors, its position (epoch, and
steps done in it), the epoch's running loss/accuracy sums and the time it has spent. The learning
rate, batch order and augmentation are pure functions of the position, so nothing else is saved.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import save_checkpoint


class EMA:
    """Exponential moving average of all float state (weights and BN statistics), with warm-up."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        self.updates = 0
        mine, theirs = self.model.state_dict(), model.state_dict()  # views of the live tensors
        self._floats = [(mine[k], theirs[k]) for k in mine if mine[k].is_floating_point()]
        self._others = [(mine[k], theirs[k]) for k in mine if not mine[k].is_floating_point()]

    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            torch._foreach_lerp_([a for a, _ in self._floats], [b for _, b in self._floats], 1.0 - d)
            for a, b in self._others:
                a.copy_(b)


def _zero_elapsed() -> dict[str, float]:
    return {"wall": 0.0, "train": 0.0, "images": 0.0}


@dataclass
class RunState:
    """The live training state of one rank, and the position it is at.

    ``step`` counts the steps done in ``epoch`` (0: at its start). ``sums`` holds the epoch's
    loss x images, correct predictions and images so far, on the device so that adding to it never
    waits for the GPU; a checkpoint stores their totals over all ranks, which rank 0 takes back on
    resume. ``elapsed``: wall and training seconds and images trained, over all calls of the run.
    """

    model: nn.Module                      # the bare network: no DDP or compile wrapper
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    sums: Tensor
    epoch: int = 0
    step: int = 0
    elapsed: dict[str, float] = field(default_factory=_zero_elapsed)
    saved_at: str | None = None           # where the newest checkpoint is, for messages

    @property
    def where(self) -> str:
        return f"epoch {self.epoch}" + (f", step {self.step}" if self.step else "")

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated and published: the EMA weights when the recipe keeps them."""
        return self.ema.model if self.ema is not None else self.model

    def add_time(self, wall: float = 0.0, train: float = 0.0, images: float = 0.0) -> None:
        self.elapsed["wall"] += wall
        self.elapsed["train"] += train
        self.elapsed["images"] += images

    def next_epoch(self) -> None:
        self.epoch, self.step = self.epoch + 1, 0
        self.sums.zero_()

    def weights_finite(self) -> bool:
        """Whether every float tensor of the model (weights and BN statistics) is finite: one host sync."""
        flags = [torch.isfinite(t).all() for t in self.model.state_dict().values() if t.is_floating_point()]
        return bool(torch.stack(flags).all().item())

    def save(self, path: str | os.PathLike[str], **extra: Any) -> None:
        """Write the checkpoint (atomically); ``extra`` goes into its info (architecture, seed)."""
        info = {"epoch": self.epoch, "step": self.step, "sums": self.sums.tolist(), "elapsed": self.elapsed,
                "ema_updates": self.ema.updates if self.ema else 0, **extra}
        save_checkpoint(path, self.model.state_dict(), self.optimizer.state_dict(), info,
                        self.ema.model.state_dict() if self.ema else None)
        self.saved_at = self.where

    def load(self, ckpt: dict[str, Any], is_main: bool) -> None:
        """Take back a checkpoint written by ``save``; only rank 0 takes the sums (they are totals)."""
        info = ckpt["info"]
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.ema is not None:  # a checkpoint without EMA tensors: the EMA starts from the weights
            self.ema.model.load_state_dict(ckpt["ema"] if ckpt["ema"] is not None else ckpt["model"])
            self.ema.updates = info.get("ema_updates", 0) if ckpt["ema"] is not None else 0
        self.epoch, self.step = info["epoch"], info["step"]
        if is_main:
            self.sums.copy_(torch.tensor(info["sums"], dtype=torch.float64))
        self.elapsed = dict(info["elapsed"])
        self.saved_at = self.where
