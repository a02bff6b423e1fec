"""Training data on the device: the splits loaded once as uint8 tensors, shuffled there per epoch.

CIFAR-10 is 150 MB as uint8, so every rank keeps the whole training split on its GPU and trains on
its slice of each global batch: results then do not depend on how many ranks share the work.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from aperture_zoo.data import DataError, Split, SubsetError, load_split, locate, stratified_indices

from . import distributed as D
from .settings import Run, TrainConfig, TrainingError


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
    # where each image came from: indices into the source's full train split (train, val) and test split
    index: dict[str, np.ndarray] = field(default_factory=dict)


def load_splits(
    data_dir: str | os.PathLike[str] | None = None,
    subset_size: int | None = None,
    val_split: int | float = 0,
    test_subset: int | None = None,
    seed: int = 0,
    download: bool = False,
    dataset: Any = None,
    val_rule: str = "equal",
) -> Splits:
    """Train/val/test numpy splits; subsets and the validation hold-out are stratified by class.

    ``val_split`` is a count (>= 1) or a fraction (< 1) of the (subset) training split; those images
    are removed from training, so choosing an epoch or a setting on them never looks at the test set.
    ``val_rule``: "equal" draws the same number from every class (CIFAR's balanced splits); "share"
    holds out that fraction of each class (a folder's classes may be of any size).
    """
    if dataset is not None:  # an aperture_zoo.datasets.Dataset (CIFAR-100, a folder): already loaded
        train_full, test_full = dataset.train, dataset.test
    else:
        train_full, test_full = load_split("train", data_dir, download), load_split("test", data_dir)
    train_idx = _subset_indices(train_full, subset_size, seed, "--subset")
    test_idx = _subset_indices(test_full, test_subset, seed, "--test-subset")
    if val_split < 0 or (val_split >= 1 and val_split != int(val_split)):
        raise SubsetError(f"--val-split must be a fraction in [0, 1) or a whole count of images, not {val_split}")
    n_val = int(round(val_split * len(train_idx))) if 0 < val_split < 1 else int(val_split)
    val_idx = None
    if n_val > 0:
        if n_val >= len(train_idx):
            raise SubsetError(f"--val-split {val_split} leaves no training images (train has {len(train_idx)})")
        labels = train_full.labels[train_idx]
        if val_rule == "share" and val_split < 1:
            from aperture_zoo.datasets import holdout_indices

            keep, held = holdout_indices(labels, float(val_split), seed + 1)
        else:
            held = stratified_indices(labels, n_val, seed + 1)
            keep = np.setdiff1d(np.arange(len(train_idx)), held)
        train_idx, val_idx = train_idx[keep], train_idx[held]
    index = {"train": train_idx, "test": test_idx, **({"val": val_idx} if val_idx is not None else {})}
    return Splits(train=_take(train_full, train_idx), test=_take(test_full, test_idx),
                  val=None if val_idx is None else _take(train_full, val_idx), index=index)


def _subset_indices(split: Split, n: int | None, seed: int, option: str) -> np.ndarray:
    """The indices ``data.subset`` takes (all of them when ``n`` is None or the split's size)."""
    if n is None or n == len(split):
        return np.arange(len(split))
    if n <= 0 or n > len(split):
        raise SubsetError(f"{option} must be in 1..{len(split)} for this split, got {n}")
    return stratified_indices(split.labels, n, seed)


def _take(split: Split, idx: np.ndarray) -> Split:
    return Split(split.images[idx], split.labels[idx], split.classes)


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


def load_run_data(cfg: TrainConfig, run: Run, info: D.DistInfo, device: torch.device, data_from_run: bool,
                  say: Callable[[str], None] | None = None) -> DeviceData:
    """The run's splits on ``device`` (fetched by rank 0 if need be), checked to hold a batch.

    ``data_from_run``: the data folder is the one a resumed run recorded, so a missing one may
    have moved. A folder's split is recorded as file lists (a new run) or checked against them
    (a resumed one, after its manifest: ``dataset_run.split_files``); a new folder run's default
    batch fits a small training set (``recipes.fit_to_data``, said through ``say``).
    """
    from .dataset_run import run_dataset, split_files
    from .recipes import fit_to_data

    record, spec = run.record, run.spec
    name = record.get("dataset", "cifar10")
    if run.resume_dir is not None and name not in ("cifar10", "cifar100") and not os.path.isdir(name):
        raise DataError(f"cannot resume {str(run.resume_dir)!r}: its dataset folder {name!r} is gone (moved or "
                        "deleted); if it moved, resume with --dataset NEW_DIR (its content is checked against the "
                        "run's), or put it back")
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
                         int(record["seed"]), dataset=dataset, val_rule=record.get("val_rule", "equal"))
    if dataset is None or dataset.name == "cifar100":
        _record_batch_files(record, dataset, cfg, run.resume_dir)
    if dataset is not None and dataset.files is not None:
        split_files(record, dataset, splits.index, run.resume_dir)
        if run.resume_dir is None:
            run.recipe, note = fit_to_data(run.recipe, len(splits.train))
            if note and say:
                say(note)
    train = DeviceSplit.from_split(splits.train, device)
    if len(train) < run.recipe.batch_size:
        raise TrainingError(f"batch size {run.recipe.batch_size} is larger than the {len(train)} training images; "
                            "lower it with --batch-size")
    if run.recipe.batch_size % info.world_size:
        raise TrainingError(f"batch size {run.recipe.batch_size} does not split over {info.world_size} ranks; "
                            "use a multiple")
    val = DeviceSplit.from_split(splits.val, device) if splits.val is not None else None
    return DeviceData(train, DeviceSplit.from_split(splits.test, device), val,
                      torch.tensor(spec.mean, device=device), torch.tensor(spec.std, device=device))


def _record_batch_files(record: dict[str, Any], dataset: Any, cfg: TrainConfig, resume_dir: Any) -> None:
    """CIFAR-10/100: the batch files the run reads, by SHA-256 (``dataset_run.batch_files``)."""
    from aperture_zoo.data import TEST_FILES, TRAIN_FILES

    from .dataset_run import batch_files

    if dataset is None:
        batch_files(record, locate(cfg.data_dir), (*TRAIN_FILES, *TEST_FILES, "batches.meta"), resume_dir)
    else:
        from aperture_zoo.datasets import locate_cifar100

        batch_files(record, locate_cifar100(cfg.data_dir), ("train", "test", "meta"), resume_dir)


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
