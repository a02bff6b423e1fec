"""``--dataset``: CIFAR-10 (the default), CIFAR-100, or a folder of the user's images, as uint8 splits.

Every source ends as the same two ``data.Split`` objects (uint8 N x 3 x 32 x 32 and int64 labels),
so the training loop, evaluation and export run unchanged on any of them:

- ``cifar10``: ``data.py``, as before;
- ``cifar100``: the official python archive ``cifar-100-python/`` (fine labels, 100 classes), read
  with the same safe unpickler, downloaded MD5-checked when online;
- a folder path: ``folder.py`` (``DIR/<class>/<image>``, decoded once and cached). Without a given
  ``train/`` + ``test/`` split a stratified ``test_split`` share (default 20 %) is held out with the
  seed; ``Dataset.record`` says how, so a run, its weights and ``aperture eval`` use the same images.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import DataError, Split, batch_labels, batch_pixels, default_data_dir, read_pickled_batch
from .files import user_path

BUILTIN = ("cifar10", "cifar100")
DEFAULT_TEST_SPLIT = 0.2
CIFAR100_DIR = "cifar-100-python"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
# Per-channel statistics of the 50,000 CIFAR-100 training images on a 0-1 scale.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class DatasetError(DataError):
    """A ``--dataset`` that cannot be used; the message says what to pass instead."""


@dataclass
class Dataset:
    """Train and test splits of one source, with how they were made (``record``, stored with a run)."""

    name: str                       # "cifar10", "cifar100", or the folder's absolute path
    train: Split
    test: Split
    record: dict[str, Any] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    files: tuple[list[str], list[str]] | None = None  # a folder: each train and test image's relative path
    manifest: Any = None                               # a folder: its manifest.Manifest (what it holds, by content)
    report: Any = None                                 # a folder: its datareport.DataReport

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes

    @property
    def is_folder(self) -> bool:
        return self.name not in BUILTIN

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training images on a 0-1 scale (what a scratch run normalises by)."""
        if self.name == "cifar100":
            return CIFAR100_MEAN, CIFAR100_STD
        if self.name == "cifar10":
            from .registry import CIFAR10_MEAN, CIFAR10_STD

            return CIFAR10_MEAN, CIFAR10_STD
        x = self.train.images
        n = x.shape[0] * x.shape[2] * x.shape[3]
        s1 = np.zeros(3)
        s2 = np.zeros(3)
        for i in range(0, len(x), 4096):  # float64 sums in chunks: a million images fit
            chunk = x[i:i + 4096].astype(np.float64) / 255.0
            s1 += chunk.sum(axis=(0, 2, 3))
            s2 += (chunk ** 2).sum(axis=(0, 2, 3))
        mean = s1 / n
        std = np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-12))
        return tuple(round(float(v), 4) for v in mean), tuple(round(max(float(v), 1e-3), 4) for v in std)


def is_builtin(dataset: str | None) -> bool:
    return dataset is None or dataset in BUILTIN


def dataset_name(dataset: str | os.PathLike[str] | None) -> str:
    """``cifar10``/``cifar100`` as given, a folder as its absolute path (what a run records)."""
    if dataset is None:
        return "cifar10"
    text = str(dataset)
    if not text.strip():  # '' would resolve to the current directory and decode whatever is there
        raise DatasetError("--dataset is empty; give cifar10, cifar100 or a folder of class sub-folders")
    if text in BUILTIN:
        return text
    if text.lower() in BUILTIN:
        return text.lower()
    return str(user_path(text).resolve())


def public_dataset(name: str) -> str:
    """A built-in dataset's name, or ``folder:NAME`` for a folder (never its path; "folder:" keeps a folder
    called cifar10 from reading as the built-in one)."""
    return name if name in BUILTIN or name.startswith("folder:") else f"folder:{Path(name).name}"


def load_dataset(
    dataset: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    test_split: float | None = None,
    seed: int = 0,
    say: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Dataset:
    """The train and test splits of ``dataset`` (see the module docstring)."""
    name = dataset_name(dataset)
    if name == "cifar10":
        from .data import load_split

        train = load_split("train", data_dir, download)
        return Dataset(name, train, load_split("test", data_dir), {"dataset": name})
    if name == "cifar100":
        folder = locate_cifar100(data_dir, download)
        return Dataset(name, read_cifar100(folder, "train"), read_cifar100(folder, "test"), {"dataset": name})
    return _from_folder(name, test_split, seed, say, progress)


def check_test_split(test_split: float | None) -> float:
    value = DEFAULT_TEST_SPLIT if test_split is None else test_split
    if not 0 < value < 1:
        raise DatasetError(f"--test-split must be a fraction between 0 and 1 (e.g. 0.2), got {value:g}")
    return value


def _from_folder(root: str, test_split: float | None, seed: int, say: Callable[[str], None] | None,
                 progress: Callable[[int, int], None] | None) -> Dataset:
    from .datareport import analyse
    from .folder import load_folder

    decoded = load_folder(root, say=say, progress=progress)
    report = analyse(decoded)  # refuses conflicting copies and classes a split cannot use
    scan, keep = decoded.scan, report.keep
    x, y, where = decoded.images[keep], decoded.labels[keep], decoded.splits[keep]
    paths = np.array([f.relpath for f in decoded.files], dtype=object)[keep]
    manifest = scan.manifest()
    record: dict[str, Any] = {"dataset": root, "layout": scan.layout, "classes": list(scan.classes),
                              "images": int(len(x)), "skipped": len(decoded.skipped),
                              "manifest_sha256": manifest.sha256}
    if scan.layout == "split":
        if test_split is not None:
            raise DatasetError(f"{root!r} has its own train/ and {scan.test_dir}/ folders, which are used as given; "
                               "drop --test-split")
        train_idx, test_idx = np.flatnonzero(where == "train"), np.flatnonzero(where == "test")
        record["test_dir"] = scan.test_dir
    else:
        fraction = check_test_split(test_split)
        train_idx, test_idx = holdout_indices(y, fraction, seed)
        record.update(test_split=fraction, split_seed=seed)
    if len(train_idx) == 0 or len(test_idx) == 0:
        which = "training" if len(train_idx) == 0 else "test"
        raise DatasetError(f"{root!r} leaves no readable {which} images; add images (each class needs at least 2 to "
                           "hold one out)")
    record.update(train_images=int(len(train_idx)), test_images=int(len(test_idx)))
    classes = scan.classes
    return Dataset(root, Split(x[train_idx], y[train_idx], classes), Split(x[test_idx], y[test_idx], classes),
                   record, decoded.skipped, (list(paths[train_idx]), list(paths[test_idx])), manifest, report)


def holdout_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: ``fraction`` of every class held out at random, at least one of a class of two or more."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        pool = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(fraction * len(pool)))
        k = min(max(k, 1 if len(pool) >= 2 else 0), len(pool) - 1) if len(pool) >= 2 else 0
        test.append(pool[:k])
        train.append(pool[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# --------------------------------------------------------------------------- CIFAR-100


def find_cifar100(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The ``cifar-100-python`` folder in ``data_dir`` (or ``data_dir`` itself)."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    for candidate in (root / CIFAR100_DIR, root):
        if (candidate / "train").is_file() and (candidate / "test").is_file():
            return candidate
    cifar10 = any((c / "data_batch_1").is_file() or (c / "batches.meta").is_file()
                  for c in (root, root / "cifar-10-batches-py"))
    if cifar10:
        raise DatasetError(
            f"{str(root)!r} holds CIFAR-10 (cifar-10-batches-py), not CIFAR-100; --dataset cifar100 needs "
            f"{CIFAR100_DIR}/ with train, test and meta. Pass --dataset cifar10 for these files, or point "
            "--data-dir at CIFAR-100"
        )
    raise DatasetError(
        f"CIFAR-100 not found in {str(root)!r} (expected {CIFAR100_DIR}/ with train, test and meta). Point "
        f"--data-dir (or $APERTURE_DATA) at the folder that contains it, or run with --download when online"
    )


def locate_cifar100(data_dir: str | os.PathLike[str] | None = None, download: bool = False) -> Path:
    try:
        return find_cifar100(data_dir)
    except DatasetError:
        if not download:
            raise
    import socket

    from .data import DOWNLOAD_TIMEOUT_S

    root = Path(data_dir) if data_dir is not None else default_data_dir()
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(CIFAR100_URL, str(root), md5=CIFAR100_MD5)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise DatasetError(
            f"CIFAR-100 is not in {str(root)!r} and downloading it from {CIFAR100_URL} failed ({exc}); if this "
            f"machine is offline, copy {CIFAR100_DIR}/ there and pass --data-dir (or --no-download)"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    return find_cifar100(root)


def _read(path: Path) -> dict:
    data = read_pickled_batch(path, "CIFAR-100 file", "a CIFAR-100 file", DatasetError)
    if not isinstance(data, dict):
        raise DatasetError(f"{str(path)!r} is not a CIFAR-100 file (no dict inside)")
    return data


def read_cifar100(folder: str | os.PathLike[str], split: str = "train") -> Split:
    """One split of ``cifar-100-python/`` with its 100 fine labels, checked entry by entry."""
    folder = Path(folder)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    data = _read(folder / split)
    if "fine_labels" not in data:
        kind = "a CIFAR-10 batch" if "labels" in data else "not a CIFAR-100 file"
        raise DatasetError(f"{str(folder / split)!r} is {kind} (no 'fine_labels'); --dataset cifar100 needs the "
                           f"official {CIFAR100_DIR}/ files")
    path = folder / split
    # the CIFAR-10 reader's checks: ragged rows, floats or values past 255 are refused, never cast
    x = batch_pixels(data.get("data"), path, "a CIFAR-100 file", DatasetError)
    y = batch_labels(data["fine_labels"], 100, path, DatasetError)
    if len(x) != len(y) or len(y) == 0:
        raise DatasetError(f"{str(path)!r}: expected N x 3072 uint8 rows and N labels, got {len(x)} rows and "
                           f"{len(y)} labels")
    return Split(x, y, cifar100_classes(folder))


def cifar100_classes(folder: Path) -> tuple[str, ...]:
    meta = folder / "meta"
    names = _read(meta).get("fine_label_names") if meta.is_file() else None
    if isinstance(names, list) and len(names) == 100 and all(isinstance(n, str) for n in names):
        return tuple(names)
    return tuple(f"class_{i}" for i in range(100))


class DatasetNotGivenError(DatasetError):
    """Weights trained on a folder, and no --dataset: a path inside a weights file is never read."""


def dataset_for_weights(
    dataset: str | os.PathLike[str] | None,
    data_dir: str | os.PathLike[str] | None,
    download: bool,
    metadata: dict[str, Any] | None,
    say: Callable[[str], None] | None = None,
) -> Dataset | None:
    """The dataset a command on trained weights uses: ``--dataset``, else the built-in one the weights name.

    Weights metadata is anyone's text (any Hub repo can write it): it may name a built-in dataset
    (cifar10, cifar100), never a path to read. Weights trained on a folder need the user to pass
    that folder (``DatasetNotGivenError`` otherwise). The recorded manifest (the folder's content), not
    its path, decides: the same content anywhere gets the run's held-out split back (share and seed
    from the ``data`` record); other content is refused, since its test images could be training
    images. The class names are checked against the weights' by the evaluation. None means CIFAR-10.
    """
    meta = metadata or {}
    recorded = meta.get("dataset") if isinstance(meta.get("dataset"), str) else "cifar10"
    if dataset is None and recorded not in BUILTIN:
        record = meta.get("data") if isinstance(meta.get("data"), dict) else {}
        classes = record.get("classes") if isinstance(record.get("classes"), list) else []
        shown = ", ".join(str(c) for c in classes[:4]) + (", ..." if len(classes) > 4 else "")
        what = f"{len(classes)} classes: {shown}; " if classes else ""
        raise DatasetNotGivenError(
            f"these weights were trained on a folder of images ({what}recorded as {recorded[:200]!r}); pass that "
            "folder with --dataset DIR. A folder named inside a weights file is never read: the file may come from anyone"
        )
    name = dataset_name(dataset) if dataset is not None else recorded
    if name == "cifar10":
        return None
    record = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    # The split is a function of the folder's content (manifest), never of its path: the recorded share and
    # seed applied to the same content, at any path, give the same file lists; other content is refused.
    trained_on = record.get("manifest_sha256") if isinstance(record.get("manifest_sha256"), str) else None
    recorded_layout = record.get("layout", "pool" if recorded not in BUILTIN else None)  # no record: assume the worst
    if name not in BUILTIN and recorded_layout is not None and Path(name).is_dir():
        _refuse_unprovable_split(name, trained_on, recorded_layout, record)
    test_split, seed = None, 0
    if trained_on is not None and recorded_layout == "pool":
        test_split = record.get("test_split") if isinstance(record.get("test_split"), float) else None
        seed = record.get("split_seed") if type(record.get("split_seed")) is int else 0
    data = load_dataset(name, data_dir, download, test_split, seed, say=say)
    if trained_on is not None and data.manifest is not None and data.manifest.sha256 != trained_on:
        raise DatasetError(
            f"the folder {name!r} is not what these weights were trained on (another folder, or it changed since "
            f"these weights were trained on it: manifest {trained_on[:12]} then, {data.manifest.sha256[:12]} now), so "
            "its test images could include images the model trained on; pass the training folder as it was (at any "
            "path: the split is rebuilt from its content)")
    return data


def _refuse_unprovable_split(name: str, trained_on: str | None, recorded_layout: Any, record: dict[str, Any]) -> None:
    """Refuse, before anything is decoded, a folder whose test images nothing shows the weights never trained on.

    The weights record their training folder by one hash of its manifest, not file by file: a pool is
    split again only when that hash matches, and another folder's test/ cannot be checked image by image.
    """
    from .folderscan import given_test_dir

    test_dir = given_test_dir(name)
    if trained_on is None and test_dir is None:  # no manifest (older or edited file), whatever layout it claims
        raise DatasetError(
            "these weights record no content manifest of the folder they were trained on (written before folders "
            "were keyed by content, or edited), so the images they held out cannot be told from those they trained "
            "on; evaluate them on a folder with train/ and test/ subfolders whose test/ images they never saw")
    if trained_on is not None and recorded_layout == "pool" and test_dir is not None:
        share = record.get("test_split")
        held = f"{share:.0%} of each class" if isinstance(share, float) else "a share of each class"
        raise DatasetError(
            f"{name!r} has its own train/ and {test_dir}/ folders, but these weights were trained on a folder of class "
            f"folders ({held} held out) and record it only by a hash of its whole content, so nothing shows that "
            f"{test_dir}/ holds no image they trained on; evaluate them on the folder they were trained on, as it was "
            "(at any path: its held-out images are chosen again from its content)")
