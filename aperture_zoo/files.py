"""One home for file names and for writing files safely.

A crash, ``kill -9`` or full disk must never leave a half-written weights file, card or
checkpoint where a reader would take it for a whole one: every writer goes through
``atomic_path`` (write a temporary sibling, fsync it, rename it over the target, fsync the folder).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WEIGHTS_FILENAME = "model.safetensors"
CONFIG_FILENAME = "config.json"
CARD_FILENAME = "README.md"
ONNX_FILENAME = "model.onnx"
EVAL_FILENAME = "eval.json"
METRICS_FILENAME = "metrics.jsonl"
CURVES_FILENAME = "curves.png"
CONFUSION_FILENAME = "confusion.png"
# What a training run or evaluation leaves beside the weights, and a card or Hub repo carries.
RUN_FILES = (EVAL_FILENAME, METRICS_FILENAME, CURVES_FILENAME, CONFUSION_FILENAME)
# A training run's folder (train/rundir.py): its settings, resume checkpoint, lock, and the zoo's checks.
RECIPE_FILENAME = "recipe.json"
RUN_FILENAME = "run.json"
CHECKPOINT_FILENAME = "checkpoint.safetensors"
LOCK_FILENAME = ".lock"
CHECK_FILENAME = "check.json"
EXPORT_REPORT_FILENAME = "export.json"
SUMMARY_JSON_FILENAME = "summary.json"
SUMMARY_MD_FILENAME = "summary.md"


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
