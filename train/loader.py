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

from aperture_zoo.data import DataError, Split, SubsetError, load_split, locate, stratified_indices, subset
from aperture_zoo.registry import ModelSpec

from . import distributed as D
from .settings import TrainConfig, TrainingError


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


@dataclass
class DeviceData:
    """A run's splits on the device and the normalisation the model was built with."""

    train: DeviceSplit
    test: DeviceSplit
    val: DeviceSplit | None
    mean: Tensor
    std: Tensor


def load_run_data(cfg: TrainConfig, record: dict[str, Any], spec: ModelSpec, batch_size: int,
                  info: D.DistInfo, device: torch.device, data_from_run: bool) -> DeviceData:
    """The run's splits on ``device`` (fetched by rank 0 if need be), checked to hold a batch.

    ``data_from_run``: the data folder is the one a resumed run recorded, so a missing one may
    have moved.
    """
    from .dataset_run import run_dataset

    dataset = run_dataset(record, cfg.data_dir, bool(cfg.download))  # CIFAR-100 or a folder; None: CIFAR-10
    try:
        if dataset is None:
            _fetch_once(cfg, info)
    except DataError as exc:
        if not data_from_run:
            raise
        raise DataError(f"{exc} (resuming {str(cfg.resume)!r} uses the data folder it was started with; pass "
                        "--data-dir if the data has moved)") from None
    splits = load_splits(cfg.data_dir, record["subset"], record["val_split"], record["test_subset"],
                         int(record["seed"]), dataset=dataset)
    train = DeviceSplit.from_split(splits.train, device)
    if len(train) < batch_size:
        raise TrainingError(
            f"batch size {batch_size} is larger than the {len(train)} training images; lower it with --batch-size"
        )
    val = DeviceSplit.from_split(splits.val, device) if splits.val is not None else None
    return DeviceData(train, DeviceSplit.from_split(splits.test, device), val,
                      torch.tensor(spec.mean, device=device), torch.tensor(spec.std, device=device))


def _fetch_once(cfg: TrainConfig, info: D.DistInfo) -> None:
    """Make sure CIFAR-10 is there, downloading it on rank 0 only.

    Ranks downloading into one folder at once would corrupt it; and if rank 0 fails (offline),
    every rank must raise the same clear error rather than wait for it at a barrier.
    """
    problem = None
    if info.is_main:
        try:
            locate(cfg.data_dir, cfg.download)
        except DataError as exc:
            problem = str(exc)
    problem = D.broadcast_object(problem, info)
    if problem:
        raise DataError(problem)
