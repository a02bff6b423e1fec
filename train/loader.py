"""Training data on the device: the splits loaded once as uint8 tensors, shuffled there per epoch.

CIFAR-10 is 150 MB as uint8, so every rank keeps the whole training split on its GPU and trains on
its slice of each global batch: results then do not depend on how many ranks share the work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from aperture_zoo.data import Split, SubsetError, load_split, stratified_indices, subset


@dataclass
class DeviceSplit:
    images: Tensor  # uint8 N x 3 x 32 x 32 on the device
    labels: Tensor  # int64 N on the device
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def from_split(cls, split: Split, device: torch.device) -> DeviceSplit:
        images = torch.from_numpy(np.ascontiguousarray(split.images)).to(device)
        labels = torch.from_numpy(np.ascontiguousarray(split.labels)).to(device)
        return cls(images, labels, tuple(split.classes))


@dataclass
class Splits:
    train: Split
    test: Split
    val: Split | None


def load_splits(
    data_dir: str | os.PathLike[str] | None = None,
    subset_size: int | None = None,
    val_split: int | float = 0,
    test_subset: int | None = None,
    seed: int = 0,
    download: bool = False,
    dataset: Any = None,
) -> Splits:
    """Train/val/test numpy splits; subsets and the validation hold-out are stratified by class.

    ``val_split`` is a count (>= 1) or a fraction (< 1) of the (subset) training split; those images
    are removed from training, so choosing an epoch or a setting on them never looks at the test set.
    """
    if dataset is not None:  # an aperture_zoo.datasets.Dataset (CIFAR-100, a folder): already loaded
        train_full, test_full = dataset.train, dataset.test
    else:
        train_full, test_full = load_split("train", data_dir, download), load_split("test", data_dir)
    train = subset(train_full, subset_size, seed)
    test = subset(test_full, test_subset, seed, option="--test-subset")
    val = None
    if val_split < 0 or (val_split >= 1 and val_split != int(val_split)):
        raise SubsetError(f"--val-split must be a fraction in [0, 1) or a whole count of images, not {val_split}")
    n_val = int(round(val_split * len(train))) if 0 < val_split < 1 else int(val_split)
    if n_val > 0:
        if n_val >= len(train):
            raise SubsetError(f"--val-split {val_split} leaves no training images (train has {len(train)})")
        held = stratified_indices(train.labels, n_val, seed + 1)
        keep = np.setdiff1d(np.arange(len(train)), held)
        val = Split(train.images[held], train.labels[held], train.classes)
        train = Split(train.images[keep], train.labels[keep], train.classes)
    return Splits(train=train, test=test, val=val)


def epoch_order(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """A fresh random order of the training set for one epoch, drawn on the device."""
    return torch.randperm(n, device=device, generator=generator)


def rank_slice(batch: int, rank: int, world: int) -> slice:
    """This rank's contiguous share of a global batch (the batch size divides by ``world``)."""
    per = batch // world
    return slice(rank * per, (rank + 1) * per)
