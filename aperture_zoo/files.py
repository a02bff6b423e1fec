"""One home for file names, hashing, reading JSON with a clear error, and writing files safely.

A crash, ``kill -9`` or full disk must never leave a half-written weights file, card or
checkpoint where a reader would take it for a whole one: every writer goes through
``atomic_path`` (write a temporary sibling, fsync it, rename it over the target, fsync the folder).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ApertureError

WEIGHTS_FILENAME = "model.safetensors"
CONFIG_FILENAME = "config.json"
CARD_FILENAME = "README.md"
ONNX_FILENAME = "model.onnx"
EVAL_FILENAME = "eval.json"
METRICS_FILENAME = "metrics.jsonl"
CURVES_FILENAME = "curves.png"
CONFUSION_FILENAME = "confusion.png"
REPORT_SUFFIX = ".report.json"  # an export's validation report: <stem>.report.json
PROVENANCE_FILENAME = "weights.json"  # a card folder's small committed record of the weights it describes
RUNTIMES_FILENAME = "runtimes.json"  # a card folder's runtime matrix (`aperture runtimes NAME -o`)
RELIABILITY_FILENAME = "reliability.png"
LICENSE_FILENAME = "LICENSE"  # the package's license, which every Hub folder carries
# What a training run or evaluation leaves beside the weights, and a card or Hub repo carries.
RUN_FILES = (EVAL_FILENAME, METRICS_FILENAME, CURVES_FILENAME, CONFUSION_FILENAME, RELIABILITY_FILENAME)
# A training run's folder (train/rundir.py): its settings, resume checkpoint, lock, and the zoo's checks.
RECIPE_FILENAME = "recipe.json"
RUN_FILENAME = "run.json"
CHECKPOINT_FILENAME = "checkpoint.safetensors"
LOCK_FILENAME = ".lock"
CHECK_FILENAME = "check.json"
EXPORT_REPORT_FILENAME = "export.json"
SUMMARY_JSON_FILENAME = "summary.json"
SUMMARY_MD_FILENAME = "summary.md"


class UnreadableFileError(ApertureError, ValueError):
    """A JSON file that is missing, truncated or not JSON; the message names it and the fix."""


def user_path(path: str | os.PathLike[str]) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded as a shell does; an unknown user stays as written.

    (pathlib's ``expanduser`` raises a bare RuntimeError for ``~nouser``; ``os.path``'s leaves it.)
    """
    return Path(os.path.expanduser(os.fspath(path)))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, streamed (the pin every published file is checked against)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_json(
    path: str | os.PathLike[str], fix: str = "write it again", error: type[ApertureError] = UnreadableFileError
) -> Any:
    """A JSON file's value, or one line naming the file, what is wrong and ``fix``."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:  # missing, a folder, truncated, not UTF-8, not JSON
        raise error(f"{path} is not readable JSON ({exc}); {fix}") from None


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())  # some writers (safetensors) create 0600: follow the umask like open()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:  # full or read-only disk: name the file the user asked for, not our temporary one
        tmp.unlink(missing_ok=True)
        if exc.filename is None or str(exc.filename) == str(tmp):
            exc.filename = str(path)
        raise
    except (Exception, KeyboardInterrupt):  # only a kill leaves the temp file (its writer's resume removes it)
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _default_mode() -> int:
    """What ``open()`` would give a new file: 0666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
