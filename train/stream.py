"""The training batches of a run, as a pure function of (seed, epoch, step).

An epoch's order is drawn from a generator seeded with ``step_seed(seed, epoch, -1)`` and each
batch's augmentation from one seeded with ``step_seed(seed, epoch, step)``. Nothing carries over
from one step to the next, so a run resumed at any step sees exactly the batches it would have seen,
and the ranks of a DDP run draw for the whole global batch and each keep their own slice of it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .augment import AugmentConfig, Batch, alternating_flips, augment_batch, flip_phase, step_seed
from .loader import DeviceSplit, epoch_order, rank_slice


class BatchStream:
    """The augmented batches of a device-resident training split, epoch by epoch, from any step."""

    def __init__(self, split: DeviceSplit, batch_size: int, augment: AugmentConfig, mean: Tensor, std: Tensor,
                 num_classes: int, seed: int, *, rank: int = 0, world_size: int = 1,
                 channels_last: bool = False) -> None:
        self.split = split
        self.batch_size = batch_size
        self.augment = augment
        self.mean, self.std = mean, std
        self.num_classes = num_classes
        self.seed = seed
        self.channels_last = channels_last
        self.shard = rank_slice(batch_size, rank, world_size) if world_size > 1 else None
        self.local_batch = batch_size // world_size  # the images this rank trains on per step
        self.steps = len(split) // batch_size        # the last partial batch is dropped: fixed shapes
        self._gen = torch.Generator(device=split.images.device)
        # per image, on the device with the images: which epochs mirror it (alternating flip only)
        self.phase = flip_phase(len(split), seed, split.images.device) if augment.alternating_flip else None

    def epoch(self, epoch: int, first_step: int = 0) -> Iterator[tuple[int, Batch]]:
        """``(step, batch)`` for steps ``first_step`` .. the epoch's last, each made when asked for."""
        self._gen.manual_seed(step_seed(self.seed, epoch, -1))
        order = epoch_order(len(self.split), self._gen, self.split.images.device)
        b = self.batch_size
        for step in range(first_step, self.steps):
            idx = order[step * b:(step + 1) * b]
            self._gen.manual_seed(step_seed(self.seed, epoch, step))
            flips = alternating_flips(idx, epoch, self.phase) if self.phase is not None else None
            yield step, augment_batch(self.split.images[idx], self.split.labels[idx], self.augment, self.mean,
                                      self.std, self.num_classes, self._gen, self.shard, self.channels_last, flips)
