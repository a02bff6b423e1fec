"""CIFAR-10 from the official python batches, read without torch and without trusting pickle.

The batches are pickles by format, so they are read with an unpickler that only rebuilds
dicts, lists, strings, bytes, numbers and numpy arrays: a tampered file cannot run code.
Splits come back as uint8 NCHW numpy arrays; callers move them to a device once.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ApertureError

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"


class DataError(ApertureError, FileNotFoundError):
    """CIFAR-10 is missing or malformed; the message says how to provide it."""


class SubsetError(ApertureError, ValueError):
    """A subset or hold-out size the split cannot provide; the message gives the valid range."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8, N x 3 x 32 x 32
    labels: np.ndarray  # int64, N
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class _SafeUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # type: ignore[no-untyped-def]
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data batch")


def _normalise_keys(obj: object) -> object:
    """Files written by Python 2 load with str keys, files written by Python 3 with bytes keys."""
    if not isinstance(obj, dict):
        return obj
    out = {}
    for key, value in obj.items():
        key = key.decode("latin1") if isinstance(key, bytes) else key
        if isinstance(value, list):
            value = [v.decode("latin1") if isinstance(v, bytes) else v for v in value]
        out[key] = value
    return out


def read_pickled_batch(path: Path, what: str, kind: str, error: type[ApertureError] = None) -> Any:  # type: ignore[assignment]
    """A CIFAR python batch (CIFAR-10 or CIFAR-100) through the safe unpickler, keys as str.

    Anything else is ``error`` (default ``DataError``) in one line naming ``what`` (e.g. "CIFAR-10
    batch") and the file; ``kind`` says what it should have been (e.g. "a CIFAR batch").
    """
    error = error or DataError
    if path.exists() and not path.is_file():
        raise error(f"{what} {str(path)!r} is not a regular file; the copy is damaged")
    try:
        with path.open("rb") as f:
            return _normalise_keys(_SafeUnpickler(f, encoding="latin1").load())
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} is missing; the copy is incomplete") from None
    except Exception as exc:  # noqa: BLE001 - any decode failure means the same thing here
        raise error(f"{what} {str(path)!r} is corrupt or not {kind} ({str(exc)[:160]})") from None


def _read_batch(path: Path) -> dict:
    data = read_pickled_batch(path, "CIFAR-10 batch", "a CIFAR batch")
    if not isinstance(data, dict) or "data" not in data or "labels" not in data:
        raise DataError(f"{str(path)!r} is not a CIFAR-10 batch (no 'data'/'labels' entries)")
    return data


def default_data_dir() -> Path:
    """``$APERTURE_DATA``, else ``$XDG_CACHE_HOME/aperture_zoo`` (``~/.cache/aperture_zoo``)."""
    env = os.environ.get("APERTURE_DATA")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "aperture_zoo"


def find_batches_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The ``cifar-10-batches-py`` folder in ``data_dir`` (or ``data_dir`` itself)."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    for candidate in (root / BATCHES_DIR, root):
        if (candidate / "batches.meta").is_file() or (candidate / "test_batch").is_file():
            return candidate
    raise DataError(_missing_message(root))


def _missing_message(root: Path) -> str:
    return (
        f"CIFAR-10 not found in {str(root)!r} (expected {BATCHES_DIR}/ with data_batch_1..5 and "
        "test_batch). Point --data-dir (or $APERTURE_DATA) at the folder that contains "
        f"{BATCHES_DIR}/, or run with --download when online. From split archive parts: "
        "cat cifar-10-python.tar.gz.part* > c.tgz && tar xzf c.tgz -C DIR"
    )


# torchvision's downloader opens the URL without a timeout; a network that drops packets instead
# of refusing them would otherwise hang the command for minutes before saying "offline".
DOWNLOAD_TIMEOUT_S = 30.0


def download(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Fetch and extract the official archive (MD5-checked by torchvision's utilities).

    Offline (or when the archive fails its MD5) this raises ``DataError`` saying how to point at a
    local copy instead, so a machine without network gets one actionable line, not a traceback.
    """
    import socket

    root = Path(data_dir) if data_dir is not None else default_data_dir()
    created = [p for p in (root, *root.parents) if not p.exists()]  # removed again if the download fails
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(ARCHIVE_URL, str(root), md5=ARCHIVE_MD5)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        _remove_empty(created)
        raise DataError(
            f"CIFAR-10 is not in {str(root)!r} and downloading it from {ARCHIVE_URL} failed ({exc}); "
            "if this machine is offline, copy the data here instead. Point --data-dir (or "
            f"$APERTURE_DATA) at a folder that contains {BATCHES_DIR}/ (pass --no-download to skip "
            "the attempt). From split archive parts: cat cifar-10-python.tar.gz.part* > c.tgz && "
            "tar xzf c.tgz -C DIR"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    return find_batches_dir(root)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed download created (deepest first), if nothing else is in them now."""
    for folder in folders:
        try:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        except OSError:
            pass


def locate(data_dir: str | os.PathLike[str] | None = None, download_if_missing: bool = False) -> Path:
    """The ``cifar-10-batches-py`` folder, downloading it first if it is missing and that is allowed."""
    try:
        return find_batches_dir(data_dir)
    except DataError:
        if not download_if_missing:
            raise
        return download(data_dir)


def load_split(
    split: str = "train", data_dir: str | os.PathLike[str] | None = None, download_if_missing: bool = False
) -> Split:
    """All images of ``split`` ("train" or "test") as uint8 NCHW plus int64 labels.

    When the files are missing and ``download_if_missing`` is set, the official archive is fetched
    into ``data_dir`` first (see ``download``); otherwise the error says how to provide them.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    folder = locate(data_dir, download_if_missing)
    classes = _class_names(folder)
    images, labels = [], []
    for name in TRAIN_FILES if split == "train" else TEST_FILES:
        batch = _read_batch(folder / name)
        images.append(batch_pixels(batch["data"], folder / name))
        labels.append(batch_labels(batch["labels"], len(classes), folder / name))
        if len(images[-1]) != len(labels[-1]):
            raise DataError(f"{str(folder / name)!r}: {len(images[-1])} images but {len(labels[-1])} labels")
    x, y = np.concatenate(images), np.concatenate(labels)
    return Split(images=x, labels=y, classes=classes)


def _as_array(values: object, what: str, path: Path, error: type[DataError]) -> np.ndarray | None:
    """``values`` (a list or array from the pickle) as one numpy array; None when it is neither.

    Rows of different lengths (a ragged list) cannot be one array: numpy raises, and that is the
    file's fault, said in one line.
    """
    if not isinstance(values, (np.ndarray, list)):
        return None
    try:
        return np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        raise error(f"{str(path)!r}: its {what} are rows of different lengths or mixed types, not one table; "
                    "the file is corrupt or not a CIFAR batch") from None


def batch_pixels(data: object, path: Path, what: str = "a CIFAR-10 batch",
                 error: type[DataError] = DataError) -> np.ndarray:
    """A batch's ``data`` as uint8 N x 3 x 32 x 32, refusing what is not 8-bit pixels (never cast blindly)."""
    arr = _as_array(data, "pixels", path, error)
    if arr is None or arr.ndim != 2 or arr.shape[1] != 3 * 32 * 32:
        shape = getattr(arr, "shape", type(data).__name__)
        raise error(f"{str(path)!r}: expected N x 3072 uint8 rows of pixels, got {shape}; the file is not {what}")
    if arr.dtype != np.uint8:
        ok = arr.dtype.kind in "iu" and (arr.size == 0 or (arr.min() >= 0 and arr.max() <= 255))
        if not ok:
            lo, hi = (arr.min(), arr.max()) if arr.size and arr.dtype.kind in "iufb" else ("?", "?")
            raise error(
                f"{str(path)!r}: pixels are {arr.dtype} in [{lo}, {hi}], not 8-bit integers 0..255 (floats "
                "scaled to [0, 1]?); write the batch with uint8 pixels as the CIFAR-10 format specifies"
            )
    return arr.astype(np.uint8).reshape(-1, 3, 32, 32)


def batch_labels(values: object, num_classes: int, path: Path, error: type[DataError] = DataError) -> np.ndarray:
    """A batch's ``labels`` as int64, each a class index 0..num_classes-1."""
    arr = _as_array(values, "labels", path, error)
    if arr is None or arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise error(f"{str(path)!r}: labels must be a list of integers, got {getattr(arr, 'dtype', type(values).__name__)}")
    bad = arr[(arr < 0) | (arr >= num_classes)] if arr.size else arr
    if bad.size:
        raise error(
            f"{str(path)!r}: {bad.size} label{' is' if bad.size == 1 else 's are'} outside the class range 0..{num_classes - 1} "
            f"(e.g. {int(bad[0])}); the batch is corrupt or belongs to another dataset"
        )
    return arr.astype(np.int64)


def _class_names(folder: Path) -> tuple[str, ...]:
    from .registry import CIFAR10_CLASSES

    meta = folder / "batches.meta"
    if not meta.is_file():
        return CIFAR10_CLASSES
    names = _read_meta(meta).get("label_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise DataError(f"{str(meta)!r}: 'label_names' is not a list of names; the file is corrupt")
    return tuple(names) if names else CIFAR10_CLASSES


def _read_meta(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return _normalise_keys(_SafeUnpickler(f, encoding="latin1").load())
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{str(path)!r} is corrupt ({exc})") from None


def stratified_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` indices with n / num_classes per class, drawn at random (never "the first n").

    The copy of CIFAR-10 this project is tested on is sorted by class, so taking a prefix would
    give one or two classes; sampling per class is the only safe subset.
    """
    classes = np.unique(labels)
    per_class, extra = divmod(n, len(classes))
    if n <= 0 or n > len(labels):
        raise SubsetError(f"subset size must be in 1..{len(labels)}, got {n}")
    rng = np.random.default_rng(seed)
    picked = []
    for i, c in enumerate(classes):
        pool = np.flatnonzero(labels == c)
        k = per_class + (1 if i < extra else 0)
        if k > len(pool):
            raise SubsetError(
                f"a stratified subset of {n} needs {k} images of class {c}, which has only {len(pool)}; "
                "choose a smaller subset"
            )
        picked.append(rng.choice(pool, size=k, replace=False))
    out = np.concatenate(picked)
    rng.shuffle(out)
    return out


def subset(split: Split, n: int | None, seed: int = 0, option: str = "--subset") -> Split:
    """A stratified subset of ``n`` images (the split itself when ``n`` is None or its size).

    Asking for more images than the split holds is an error rather than a silent "all of it", so a
    typo in ``--subset`` cannot turn a smoke run into a full one.
    """
    if n is None or n == len(split):
        return split
    if n <= 0 or n > len(split):
        raise SubsetError(f"{option} must be in 1..{len(split)} for this split, got {n}")
    idx = stratified_indices(split.labels, n, seed)
    return Split(images=split.images[idx], labels=split.labels[idx], classes=split.classes)
