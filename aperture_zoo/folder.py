"""A folder of the user's own images, ``DIR/<class>/<image>``, as in-memory uint8 splits.

Every image goes through the one image rule (``images.load_image``: EXIF upright, RGB, bilinear to
32x32), so a picture trains exactly as ``aperture predict`` and the browser see it. Decoding runs
once per distinct content, in parallel processes, and the result is cached as a plain ``.npz`` (no
pickle) keyed by the folder's resolved path and every file's path, class and SHA-256
(``manifest.py``): never by names, sizes or times, so two look-alike folders never share pixels and
a file edited in place is decoded again. The cache records its full key and the SHA-256 of its own
arrays, so a cache file edited or damaged after it was written is decoded again, never served. A second run, every DDP rank and ``aperture eval`` read the
cache (3 KiB an image) instead of decoding. Files that cannot be decoded (unreadable, truncated,
empty, decompression bombs, symlink loops) are skipped and named; files that are not images
(hidden, system, other extensions, outside any class folder) are ignored and named.

What is in the folder (layout, classes, files, what is ignored and why) is ``folderscan.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ApertureError
from .folderscan import FileEntry, FolderError, Scan, scan_folder
from .manifest import hash_files

__all__ = ["DecodedFolder", "FileEntry", "FolderError", "Scan", "decode_files", "load_folder", "scan_folder"]

# Bump when images.py changes the pixels a file gives: old caches are then never reused.
IMAGE_RULE_VERSION = 1
CACHE_FORMAT = "aperture_zoo.folder/3"
SIZE = (32, 32)
_INLINE_BELOW = 512  # fewer files than this decode in this process (a pool's start-up costs more)
_CHUNK = 256
MAX_FILE_BYTES = 512 << 20


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
    files: list[FileEntry] = field(default_factory=list)  # the decoded images' entries, in the same order


# --------------------------------------------------------------------------- decoding


CHANGED = "changed while it was being read"  # the reason of a file whose bytes are not the ones hashed


def _decode_one(path: str, sha256: str | None = None) -> tuple[np.ndarray | None, str | None]:
    """One file by the image rule, as uint8 3 x 32 x 32; or None and why it was skipped.

    ``sha256``: what the file's bytes hashed to when the folder was scanned. The file is read once, and
    those very bytes are hashed and decoded: bytes that differ (the file was being written) are not
    decoded (``CHANGED``), so a cache keyed by the hashes never holds pixels of other bytes."""
    import warnings

    from PIL import Image

    from .images import ImageError, ImageTooLargeError, load_image

    try:
        if not Path(path).is_file():  # FIFOs and devices would block: the image rule names them
            if sha256:  # hashed as a regular file a moment ago: it is being changed (gone, or replaced)
                return None, CHANGED
            raise ImageError(f"image {path!r} is not a regular file; check the path")
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:  # read whole below: far above any image a 32x32 classifier takes
            return None, f"too large for an image ({size / 2**20:,.0f} MiB, the limit is {MAX_FILE_BYTES >> 20} MiB)"
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            if sha256:  # readable when hashed a moment ago
                return None, CHANGED
            raise
        if not data:
            return None, "empty file (0 bytes)"
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            return None, CHANGED
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            pixels, _ = load_image(path, SIZE, data=data)
    except (ImageTooLargeError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return None, f"decompression bomb ({str(exc)[:160]})"
    except ApertureError as exc:
        text = str(exc)
        reason = "truncated" if "truncated" in text else "not a decodable image"
        return None, f"{reason} ({text.split('(', 1)[-1].rsplit(')', 1)[0][:120]})"
    except (OSError, ValueError, MemoryError) as exc:
        return None, f"unreadable ({type(exc).__name__}: {str(exc)[:120]})"
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)), None


def _decode_chunk(paths: list[str], digests: list[str | None] | None = None) -> tuple[np.ndarray, list[str | None]]:
    out = np.zeros((len(paths), 3, *SIZE[::-1]), np.uint8)
    reasons: list[str | None] = []
    for i, p in enumerate(paths):
        img, reason = _decode_one(p, digests[i] if digests else None)
        if img is not None:
            out[i] = img
        reasons.append(reason)
    return out, reasons


def decode_files(paths: list[str], workers: int | None = None, progress: Callable[[int], None] | None = None,
                 digests: list[str | None] | None = None) -> tuple[np.ndarray, list[str | None]]:
    """Decode ``paths`` in parallel processes (in this one for a few files); reasons are None when decoded.
    ``digests``: each file's SHA-256 from the scan (a file whose bytes differ now is ``CHANGED``)."""
    images = np.zeros((len(paths), 3, *SIZE[::-1]), np.uint8)
    reasons: list[str | None] = [None] * len(paths)
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    sums = digests if digests is not None else [None] * len(paths)
    chunks = [(i, paths[i:i + _CHUNK]) for i in range(0, len(paths), _CHUNK)]
    if workers <= 1 or len(paths) < _INLINE_BELOW:
        results = ((start, _decode_chunk(chunk, sums[start:start + _CHUNK])) for start, chunk in chunks)
        for start, (imgs, why) in results:
            images[start:start + len(why)], reasons[start:start + len(why)] = imgs, why
            if progress:
                progress(len(why))
        return images, reasons
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        for (start, chunk), (imgs, why) in zip(chunks, pool.map(_decode_chunk, [c for _, c in chunks],
                                                                 [sums[i:i + _CHUNK] for i, _ in chunks])):
            images[start:start + len(chunk)], reasons[start:start + len(chunk)] = imgs, why
            if progress:
                progress(len(chunk))
    return images, reasons


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    from .data import default_data_dir

    return default_data_dir() / "folders"


def cache_key(scan: Scan) -> str:
    """The folder (resolved path) and every file's path, class and content: sizes and times decide nothing."""
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_FORMAT, IMAGE_RULE_VERSION, list(SIZE), str(scan.root), list(scan.classes)]).encode())
    for f in scan.files:
        h.update(json.dumps([f.relpath, f.label, f.split, f.sha256]).encode())
    return h.hexdigest()


def hash_scan(scan: Scan, workers: int | None = None) -> Scan:
    """``scan`` with every file's SHA-256 filled in ("" for a file that cannot be read: the decoder says why)."""
    digests = hash_files([str(scan.root / f.relpath) for f in scan.files], workers, sum(f.size for f in scan.files))
    scan.files = [dataclasses.replace(f, sha256=d or "") for f, d in zip(scan.files, digests)]
    return scan


def _read_cache(path: Path, scan: Scan) -> DecodedFolder | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if (str(z["format"]) != CACHE_FORMAT or str(z["key"]) != cache_key(scan)
                    or tuple(str(c) for c in z["classes"]) != scan.classes):
                return None
            images, ok = z["images"], z["ok"]
            skipped = list(zip((str(p) for p in z["skipped_paths"]), (str(r) for r in z["skipped_reasons"])))
            recorded = str(z["digest"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # unreadable, truncated or from another version: decode again
    if (images.dtype != np.uint8 or images.shape[1:] != (3, *SIZE[::-1]) or ok.dtype != bool
            or ok.shape != (len(scan.files),) or len(images) != int(ok.sum())):
        return None
    if recorded != _digest(images, ok, skipped):
        return None  # edited or damaged since it was written: its pixels are not what was decoded
    return _decoded(scan, images, ok, skipped, True, path)


def _decoded(scan: Scan, images: np.ndarray, ok: np.ndarray, skipped: list[tuple[str, str]], from_cache: bool,
             path: Path | None) -> DecodedFolder:
    files = [f for f, keep in zip(scan.files, ok) if keep]
    labels = np.array([f.label for f in files], np.int64)
    splits = np.array([f.split for f in files], dtype=str)
    return DecodedFolder(scan, images, labels, splits, skipped, from_cache, path, files)


def _write_cache(path: Path, d: DecodedFolder, ok: np.ndarray) -> None:
    from .files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, format=np.array(CACHE_FORMAT), key=np.array(cache_key(d.scan)),
                 classes=np.array(d.scan.classes, dtype=str), images=d.images, ok=ok,
                 skipped_paths=np.array([p for p, _ in d.skipped], dtype=str),
                 skipped_reasons=np.array([r for _, r in d.skipped], dtype=str),
                 digest=np.array(_digest(d.images, ok, d.skipped)))


def _digest(images: np.ndarray, ok: np.ndarray, skipped: list[tuple[str, str]]) -> str:
    """SHA-256 of what the cache holds: a cache edited in place (or half-written by another tool) is decoded again."""
    h = hashlib.sha256()
    h.update(json.dumps([list(images.shape), skipped]).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(ok).tobytes())
    return h.hexdigest()


def load_folder(root: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None,
                workers: int | None = None, say: Callable[[str], None] | None = None,
                progress: Callable[[int, int], None] | None = None) -> DecodedFolder:
    """The folder's images decoded once (from the cache when every file's content is unchanged).

    Every file is read and hashed on each call (the cache key, ``cache_key``), then decoded only
    on a cache miss, once per distinct content. Processes that ask at the same time (DDP ranks)
    wait on a file lock: one decodes, the others read its cache. ``progress(done, total)`` follows
    the decoding. A folder where nothing decodes is an error naming the first few files and why.
    """
    from filelock import FileLock

    scan = hash_scan(scan_folder(root), workers)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"{cache_key(scan)[:40]}.npz"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")
    except OSError:
        lock = None  # a read-only cache folder: decode without caching
    with lock if lock is not None else _null():
        hit = _read_cache(path, scan) if path.is_file() else None
        if hit is not None:
            return _checked(hit)
        images, reasons = _decode_distinct(scan, workers, say, progress)
        ok = np.array([r is None for r in reasons], bool)
        skipped = scan.skipped + [(f.relpath, r) for f, r in zip(scan.files, reasons) if r is not None]
        decoded = _checked(_decoded(scan, images[ok], ok, skipped, False, None))
        if lock is not None:
            try:
                _write_cache(path, decoded, ok)
                decoded.cache_file = path
            except OSError:  # a full or read-only disk: the run goes on without a cache
                decoded.cache_file = None
        return decoded


def _decode_distinct(scan: Scan, workers: int | None, say: Callable[[str], None] | None,
                     progress: Callable[[int, int], None] | None) -> tuple[np.ndarray, list[str | None]]:
    """Every file's pixels (or why not), decoding each distinct content once; unreadable files each on their own."""
    first: dict[str, int] = {}
    where = np.empty(len(scan.files), np.int64)
    distinct: list[str] = []
    digests: list[str | None] = []
    for i, f in enumerate(scan.files):
        key = f.sha256 or f"unhashed:{i}"
        if key not in first:
            first[key] = len(distinct)
            distinct.append(str(scan.root / f.relpath))
            digests.append(f.sha256 or None)
        where[i] = first[key]
    total = len(distinct)
    if say:
        say(f"decoding {total:,} images of {str(scan.root)!r} to 32x32 (once; cached for later runs)")
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], total)

    images, reasons = decode_files(distinct, workers, tick, digests)
    changed = [distinct[k] for k, r in enumerate(reasons) if r == CHANGED]
    if changed:  # nothing of this decode is cached or trained on: its key would name other bytes
        raise FolderError(
            f"{_n(len(changed))} in {str(scan.root)!r} changed while being read (e.g. "
            f"{Path(changed[0]).relative_to(scan.root).as_posix()!r}): the content decoded is not the content hashed "
            "a moment before, so nothing was cached or used; run again once nothing is writing to the folder")
    return images[where], [reasons[k] for k in where]


def _n(count: int) -> str:
    return f"{count} file{'s' if count != 1 else ''}"


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
