"""A folder of the user's own images, ``DIR/<class>/<image>``, as in-memory uint8 splits.

Every image goes through the one image rule (``images.load_image``: EXIF upright, RGB, bilinear to
32x32), so a picture trains exactly as ``aperture predict`` and the browser see it. Decoding runs
once, in parallel processes, and the result is cached as a plain ``.npz`` (no pickle) keyed by the
file list, sizes and modification times: a second run, every DDP rank and ``aperture eval`` read
the cache (3 KiB an image) instead of the files. Files that cannot be decoded (unreadable,
truncated, empty, decompression bombs, symlink loops) are skipped and counted; the run goes on
unless none is readable.

Layout: ``DIR/train/<class>/`` with ``DIR/test/<class>/`` (or ``DIR/val/``) is used as given;
otherwise every ``DIR/<class>/`` is one pool that the caller splits (``datasets.py``). Class names
are the folder names, sorted, exactly as written (spaces, unicode, brackets included).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ApertureError
from .files import user_path

# Bump when images.py changes the pixels a file gives: old caches are then never reused.
IMAGE_RULE_VERSION = 1
CACHE_FORMAT = "aperture_zoo.folder/1"
SIZE = (32, 32)
_INLINE_BELOW = 512  # fewer files than this decode in this process (a pool's start-up costs more)
_CHUNK = 256


class FolderError(ApertureError, ValueError):
    """A folder that cannot be used as a dataset; the message says what to change."""


@dataclass(frozen=True)
class FileEntry:
    relpath: str   # relative to the dataset root, "/"-separated
    label: int
    split: str     # "train", "test" or "pool" (no given split: the caller holds out a test share)
    size: int
    mtime_ns: int


@dataclass
class Scan:
    """What is in the folder, before any image is decoded."""

    root: Path
    layout: str                          # "split" (train/ + test/ or val/) or "pool"
    classes: tuple[str, ...]
    files: list[FileEntry]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relpath, reason) found while scanning
    ignored: int = 0                     # files that are not images by their extension
    test_dir: str | None = None          # "test" or "val" for the split layout

    def cache_key(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([CACHE_FORMAT, IMAGE_RULE_VERSION, list(SIZE), list(self.classes)]).encode())
        for f in self.files:
            h.update(json.dumps([f.relpath, f.label, f.split, f.size, f.mtime_ns]).encode())
        return h.hexdigest()


@dataclass
class DecodedFolder:
    """The decoded images: uint8 N x 3 x 32 x 32 in scan order, with what could not be used."""

    scan: Scan
    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray                   # "train" / "test" / "pool" per image
    skipped: list[tuple[str, str]]       # (relpath, reason), scan and decode together
    from_cache: bool = False
    cache_file: Path | None = None


def _image_extensions() -> frozenset[str]:
    from PIL import Image

    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _walk_files(top: Path, root: Path, skipped: list[tuple[str, str]]) -> list[tuple[str, os.stat_result]]:
    """Every regular file under ``top`` (symlinks followed, loops detected), as (relpath, stat)."""
    out: list[tuple[str, os.stat_result]] = []
    seen: set[tuple[int, int]] = set()

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    def visit(folder: Path) -> None:
        try:
            st = folder.stat()
        except OSError as exc:
            skipped.append((rel(folder), _os_reason(exc)))
            return
        if (st.st_dev, st.st_ino) in seen:
            skipped.append((rel(folder), "symlink loop (this folder is already part of the walk)"))
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped.append((rel(folder), _os_reason(exc)))
            return
        for entry in entries:
            if _is_hidden(entry.name):
                continue
            path = folder / entry.name
            try:
                st_entry = path.stat()  # follows symlinks; a loop raises ELOOP
            except OSError as exc:
                skipped.append((rel(path), _os_reason(exc)))
                continue
            if stat.S_ISDIR(st_entry.st_mode):
                visit(path)
            elif stat.S_ISREG(st_entry.st_mode):
                out.append((rel(path), st_entry))

    visit(top)
    return out


def _os_reason(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        return "broken symlink"
    if exc.errno == errno.EACCES:
        return "permission denied"
    return f"unreadable ({exc.strerror or exc})"


def _class_dirs(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if not _is_hidden(e.name) and _is_dir(folder / e.name))
    except OSError as exc:
        raise FolderError(f"cannot read the folder {str(folder)!r} ({exc.strerror or exc}); check its permissions") from None


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a symlink loop in place of a class folder: counted when walked, not a class
        return False


def scan_folder(root: str | os.PathLike[str]) -> Scan:
    """List the folder's classes and image files (nothing decoded); one-line errors for unusable layouts."""
    root = user_path(root)
    if not root.exists():
        raise FolderError(f"dataset folder {str(root)!r} does not exist; pass cifar10, cifar100 or a folder of "
                          "class folders (DIR/<class>/<image>)")
    if not root.is_dir():
        raise FolderError(f"--dataset {str(root)!r} is a file; pass a folder of class folders (DIR/<class>/<image>)")
    root = root.resolve()
    test_dir = next((d for d in ("test", "val") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes = tuple(_class_dirs(root / "train"))
        test_classes = _class_dirs(root / test_dir)
        extra = [c for c in test_classes if c not in classes]
        if extra:
            raise FolderError(
                f"{test_dir}/ has class folder(s) that train/ lacks: {', '.join(repr(c) for c in extra[:5])}"
                f"{' ...' if len(extra) > 5 else ''}; a model cannot learn a class it never sees. Add training "
                f"images for them under {str(root / 'train')!r} or remove them from {test_dir}/"
            )
        parts = [("train", root / "train"), ("test", root / test_dir)]
        layout = "split"
    else:
        pool = root / "train" if (root / "train").is_dir() else root
        classes = tuple(_class_dirs(pool))
        parts = [("pool", pool)]
        layout = "pool"
    _check_classes(root, classes)
    exts = _image_extensions()
    files: list[FileEntry] = []
    skipped: list[tuple[str, str]] = []
    ignored = 0
    for split, base in parts:
        for label, name in enumerate(classes):
            if not (base / name).is_dir():
                continue  # a class the test split does not have: its per-class accuracy shows "no images"
            for relpath, st in _walk_files(base / name, root, skipped):
                if os.path.splitext(relpath)[1].lower() not in exts:
                    ignored += 1
                    continue
                files.append(FileEntry(relpath, label, split, st.st_size, st.st_mtime_ns))
    if not files:
        raise FolderError(f"no image files in {str(root)!r} (looked in {', '.join(n for n in classes[:5])}"
                          f"{' ...' if len(classes) > 5 else ''}); put PNG/JPEG/... files in each class folder")
    return Scan(root, layout, classes, files, skipped, ignored, test_dir)


def _check_classes(root: Path, classes: tuple[str, ...]) -> None:
    where = "train/" if (root / "train").is_dir() else str(root)
    if not classes:
        raise FolderError(f"{str(root)!r} has no class folders; arrange images as DIR/<class>/<image> "
                          "(one sub-folder per class)")
    if len(classes) == 1 and classes[0] in ("test", "val") and not (root / "train").is_dir():
        raise FolderError(f"{str(root)!r} has {classes[0]}/ but no train/, so {classes[0]!r} was read as the only "
                          f"class; add DIR/train/<class>/ beside DIR/{classes[0]}/<class>/, or put the class "
                          "folders directly in DIR (a held-out split is then made)")
    if len(classes) == 1:
        raise FolderError(f"{where!r} has a single class folder ({classes[0]!r}); a classifier needs at least "
                          "two classes: add a folder per class")


# --------------------------------------------------------------------------- decoding


def _decode_one(path: str) -> tuple[np.ndarray | None, str | None]:
    """One file by the image rule, as uint8 3 x 32 x 32; or None and why it was skipped."""
    import warnings

    from PIL import Image

    from .images import ImageTooLargeError, load_image

    try:
        if os.path.getsize(path) == 0:
            return None, "empty file (0 bytes)"
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            pixels, _ = load_image(path, SIZE)
    except (ImageTooLargeError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return None, f"decompression bomb ({str(exc)[:160]})"
    except ApertureError as exc:
        text = str(exc)
        reason = "truncated" if "truncated" in text else "not a decodable image"
        return None, f"{reason} ({text.split('(', 1)[-1].rsplit(')', 1)[0][:120]})"
    except (OSError, ValueError, MemoryError) as exc:
        return None, f"unreadable ({type(exc).__name__}: {str(exc)[:120]})"
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)), None


def _decode_chunk(paths: list[str]) -> tuple[np.ndarray, list[str | None]]:
    out = np.zeros((len(paths), 3, *SIZE[::-1]), np.uint8)
    reasons: list[str | None] = []
    for i, p in enumerate(paths):
        img, reason = _decode_one(p)
        if img is not None:
            out[i] = img
        reasons.append(reason)
    return out, reasons


def decode_files(paths: list[str], workers: int | None = None,
                 progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[str | None]]:
    """Decode ``paths`` in parallel processes (in this one for a few files); reasons are None when decoded."""
    images = np.zeros((len(paths), 3, *SIZE[::-1]), np.uint8)
    reasons: list[str | None] = [None] * len(paths)
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    chunks = [(i, paths[i:i + _CHUNK]) for i in range(0, len(paths), _CHUNK)]
    if workers <= 1 or len(paths) < _INLINE_BELOW:
        results = ((start, _decode_chunk(chunk)) for start, chunk in chunks)
        for start, (imgs, why) in results:
            images[start:start + len(why)], reasons[start:start + len(why)] = imgs, why
            if progress:
                progress(len(why))
        return images, reasons
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        for (start, chunk), (imgs, why) in zip(chunks, pool.map(_decode_chunk, [c for _, c in chunks])):
            images[start:start + len(chunk)], reasons[start:start + len(chunk)] = imgs, why
            if progress:
                progress(len(chunk))
    return images, reasons


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    from .data import default_data_dir

    return default_data_dir() / "folders"


def _read_cache(path: Path, scan: Scan) -> DecodedFolder | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["format"]) != CACHE_FORMAT or tuple(str(c) for c in z["classes"]) != scan.classes:
                return None
            images, labels, splits = z["images"], z["labels"], z["splits"]
            skipped = list(zip((str(p) for p in z["skipped_paths"]), (str(r) for r in z["skipped_reasons"])))
    except (OSError, ValueError, KeyError, EOFError):
        return None  # unreadable or from another version: decode again
    if images.dtype != np.uint8 or images.shape[1:] != (3, *SIZE[::-1]) or len(images) != len(labels):
        return None
    return DecodedFolder(scan, images, labels.astype(np.int64), splits.astype(str), skipped, True, path)


def _write_cache(path: Path, d: DecodedFolder) -> None:
    from .files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, format=np.array(CACHE_FORMAT), classes=np.array(d.scan.classes, dtype=str),
                 images=d.images, labels=d.labels, splits=np.array(d.splits, dtype=str),
                 skipped_paths=np.array([p for p, _ in d.skipped], dtype=str),
                 skipped_reasons=np.array([r for _, r in d.skipped], dtype=str))


def load_folder(root: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None,
                workers: int | None = None, say: Callable[[str], None] | None = None,
                progress: Callable[[int, int], None] | None = None) -> DecodedFolder:
    """The folder's images decoded once (from the cache when the files are unchanged).

    Processes that ask at the same time (DDP ranks) wait on a file lock: one decodes, the others
    read its cache. ``progress(done, total)`` follows the decoding. A folder where nothing decodes
    is an error naming the first few files and why.
    """
    from filelock import FileLock

    scan = scan_folder(root)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = scan.cache_key()
    path = cache / f"{key[:40]}.npz"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")
    except OSError:
        lock = None  # a read-only cache folder: decode without caching
    with lock if lock is not None else _null():
        hit = _read_cache(path, scan) if path.is_file() else None
        if hit is not None:
            return _checked(hit)
        total = len(scan.files)
        if say:
            say(f"decoding {total:,} images of {str(scan.root)!r} to 32x32 (once; cached for later runs)")
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress:
                progress(done[0], total)

        images, reasons = decode_files([str(scan.root / f.relpath) for f in scan.files], workers, tick)
        ok = np.array([r is None for r in reasons], bool)
        labels = np.array([f.label for f in scan.files], np.int64)
        splits = np.array([f.split for f in scan.files], dtype=str)
        skipped = scan.skipped + [(f.relpath, r) for f, r in zip(scan.files, reasons) if r is not None]
        decoded = DecodedFolder(scan, images[ok], labels[ok], splits[ok], skipped)
        _checked(decoded)
        if lock is not None:
            try:
                _write_cache(path, decoded)
                decoded.cache_file = path
            except OSError:  # a full or read-only disk: the run goes on without a cache
                decoded.cache_file = None
        return decoded


def _checked(d: DecodedFolder) -> DecodedFolder:
    if len(d.images) == 0:
        first = "; ".join(f"{p}: {r}" for p, r in d.skipped[:3])
        raise FolderError(f"none of the {len(d.skipped)} files in {str(d.scan.root)!r} could be decoded as an image "
                          f"({first}); check the files")
    return d


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
