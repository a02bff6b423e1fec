"""A folder dataset's content manifest: every image file's path, class and SHA-256, and its identity.

The manifest is what a run was trained on, by content: the decode cache is keyed by it (two folders
with the same names, sizes and times never share pixels; a file edited in place is decoded again),
``run.json`` records it with the split as file lists, and ``--resume`` refuses a folder whose
manifest changed, naming what changed. Its identity is the SHA-256 of its canonical JSON.

One hash per file, SHA-256 rather than a faster non-cryptographic one: with SHA extensions it runs
at BLAKE2b's speed, opening and reading the files costs as much, and all of it is a few percent of
the decode (``bench/folder_keying.py``: 0.6 s against 20 s for 20,000 files), while one strong hash
also serves as provenance and finds exact duplicates without a second pass.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ApertureError

FORMAT = "aperture_zoo.manifest/1"
_READ = 1 << 20


class ManifestError(ApertureError, ValueError):
    """A recorded manifest that cannot be read back; the message says what to do instead."""


def file_digest(path: str | os.PathLike[str]) -> str | None:
    """The SHA-256 of a file's bytes, or None when it cannot be read (the decoder then names why)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_READ):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


_THREADS_FROM = 256 << 10  # mean file size from which threads pay (measured: bench/folder_keying.py)


def hash_files(paths: Sequence[str | os.PathLike[str]], workers: int | None = None,
               total_bytes: int | None = None) -> list[str | None]:
    """``file_digest`` of every path; in threads for large files (reads and hashlib then release the GIL).

    Small files (thumbnails, 32x32 PNGs) hash faster in one thread: per file, the open and the GIL
    hand-over cost more than the hash (2x slower in threads on 20,000 files of 2.6 KB).
    """
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    small = total_bytes is not None and total_bytes < _THREADS_FROM * max(len(paths), 1)
    if workers <= 1 or len(paths) < 64 or small:
        return [file_digest(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(file_digest, paths, chunksize=64))


@dataclass(frozen=True)
class Manifest:
    """``files``: (relative path, class name, SHA-256 or "" when unreadable), sorted by path."""

    files: tuple[tuple[str, str, str], ...]

    @classmethod
    def of(cls, entries: Iterable[tuple[str, str, str | None]]) -> Manifest:
        return cls(tuple(sorted((p, c, h or "") for p, c, h in entries)))

    @property
    def sha256(self) -> str:
        """The dataset's identity: SHA-256 of the canonical JSON of the format and every entry."""
        text = json.dumps([FORMAT, [list(f) for f in self.files]], separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def to_record(self) -> dict[str, Any]:
        return {"format": FORMAT, "sha256": self.sha256, "files": [list(f) for f in self.files]}

    @classmethod
    def from_record(cls, record: Any, where: str = "the run") -> Manifest:
        """The manifest ``to_record`` wrote, checked entry by entry and against its own SHA-256."""
        ok = isinstance(record, dict) and record.get("format") == FORMAT and isinstance(record.get("files"), list)
        files = record.get("files") if ok else []
        if ok and all(isinstance(f, list) and len(f) == 3 and all(isinstance(v, str) for v in f) for f in files):
            manifest = cls(tuple(sorted(tuple(f) for f in files)))  # type: ignore[misc]
            if manifest.sha256 == record.get("sha256"):
                return manifest
        raise ManifestError(f"the dataset manifest recorded by {where} is damaged (its entries do not give its "
                            "SHA-256); start a new run")

    def changes_from(self, old: Manifest) -> str:
        """What changed since ``old``, in one line: "46 files added under cat/, 2 changed: cat/a.png, ..."."""
        before = {p: (c, h) for p, c, h in old.files}
        now = {p: (c, h) for p, c, h in self.files}
        added = sorted(set(now) - set(before))
        removed = sorted(set(before) - set(now))
        changed = sorted(p for p in set(now) & set(before) if now[p] != before[p])
        parts = [_where(added, "added"), _where(removed, "removed")]
        if changed:
            shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
            parts.append(f"{len(changed)} changed: {shown}")
        return ", ".join(p for p in parts if p) or "no file differs (the manifest format changed)"


def _where(paths: list[str], verb: str) -> str:
    if not paths:
        return ""
    folders = Counter(_folder(p) for p in paths)
    noun = "file" if len(paths) == 1 else "files"
    if len(folders) == 1:
        return f"{len(paths)} {noun} {verb} under {next(iter(folders))}"
    top = ", ".join(f"{f} ({n})" for f, n in folders.most_common(3))
    more = f" and {len(folders) - 3} more folders" if len(folders) > 3 else ""
    return f"{len(paths)} {noun} {verb} under {top}{more}"


def _folder(relpath: str) -> str:
    parent = Path(relpath).parent.as_posix()
    return "./" if parent == "." else parent + "/"
