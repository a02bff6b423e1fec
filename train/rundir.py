"""A training run's folder, as one object: ``RunDir.open`` claims (or reopens) and locks it.

A run folder holds ``recipe.json`` and ``run.json`` (what was trained, and how), ``metrics.jsonl``
(one row per finished epoch), the resume checkpoint, and at the end the weights and curves. A new
folder is created exclusively (``runs/NAME-TIME``, then ``-2``, ``-3`` ... for runs started in the
same second), and a folder in use by another process is refused: two writers would interleave
their metrics and overwrite each other's weights. ``RunDir(path)`` alone reads a folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aperture_zoo.errors import ApertureError
from aperture_zoo.files import (CHECKPOINT_FILENAME, CURVES_FILENAME, LOCK_FILENAME, METRICS_FILENAME,
                                RECIPE_FILENAME, RUN_FILENAME, WEIGHTS_FILENAME, atomic_write_text)

from .checkpoint import CheckpointError
from .recipes import Recipe

# What a run folder holds before its first checkpoint: such a folder may be started again.
_PRE_CHECKPOINT_FILES = frozenset({METRICS_FILENAME, RECIPE_FILENAME, RUN_FILENAME, LOCK_FILENAME})
# Files written through a temporary sibling (``<name>.tmp<pid>``) that a kill -9 can leave behind.
_WRITTEN_ATOMICALLY = (CHECKPOINT_FILENAME, RUN_FILENAME, RECIPE_FILENAME, METRICS_FILENAME)


class RunDirError(ApertureError, RuntimeError):
    """A run folder that cannot be used: someone else's files, another run, or in use."""


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def open(cls, requested: str | os.PathLike[str] | None, name: str, stack: contextlib.ExitStack, *,
             resume: bool = False, started: float | None = None) -> RunDir:
        """The run's folder, locked for as long as ``stack`` is open.

        ``resume``: ``requested`` is the run being continued. Otherwise a new folder: ``requested``
        (``--out``) if ``check_new`` allows it, else ``runs/NAME-YYYYmmdd-HHMMSS`` of ``started``
        (default: now), created exclusively.
        """
        if resume and requested is not None:
            folder = cls(Path(requested))
        elif requested is not None:
            cls.check_new(requested)
            Path(requested).mkdir(parents=True, exist_ok=True)
            folder = cls(Path(requested))
        else:
            folder = cls._claim_default(name, time.time() if started is None else started)
        stack.enter_context(folder._lock())
        return folder

    @classmethod
    def _claim_default(cls, name: str, started: float) -> RunDir:
        base = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}"
        base.parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            path = base if n == 1 else base.with_name(f"{base.name}-{n}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return cls(path)
        raise RunDirError(f"could not create a new run folder beside {str(base)!r}; pass --out")

    @staticmethod
    def check_new(path: str | os.PathLike[str]) -> None:
        """Refuse a new run in ``path`` unless it is missing, empty, or a run that never checkpointed.

        A run that stopped before its first checkpoint left only its settings there, so starting it
        again loses nothing; anything else (a checkpointed run, someone's files) is never overwritten.
        """
        path = Path(path)
        if not path.exists():
            return
        if not path.is_dir():
            raise RunDirError(f"--out {str(path)!r} is a file, not a folder; choose another --out")
        if (path / CHECKPOINT_FILENAME).exists():
            raise RunDirError(
                f"{str(path)!r} already holds a training run; continue it with --resume {path} "
                "or choose another --out"
            )
        other = sorted(p.name for p in path.iterdir() if p.name not in _PRE_CHECKPOINT_FILES
                       and not p.name.startswith(tuple(f"{name}.tmp" for name in _WRITTEN_ATOMICALLY)))
        if other:
            more = f" and {len(other) - 1} more" if len(other) > 1 else ""
            raise RunDirError(
                f"--out {str(path)!r} is not empty (it holds {other[0]!r}{more}) and is not a run of "
                "`aperture train`; choose a new or empty folder, or leave out --out for a fresh runs/NAME-TIME"
            )

    @contextlib.contextmanager
    def _lock(self):  # type: ignore[no-untyped-def]
        """An exclusive lock on the folder while training; the OS drops it when the process dies."""
        from filelock import FileLock, Timeout

        lock = FileLock(self.path / LOCK_FILENAME, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunDirError(
                f"{str(self.path)!r} is in use by another training process; wait for it to finish, or "
                "start a new run (leave out --out for a fresh folder)"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def in_use(self) -> bool:
        """Whether another process holds the folder's lock right now (a run starting or training)."""
        from filelock import FileLock, Timeout

        if not (self.path / LOCK_FILENAME).is_file():
            return False
        lock = FileLock(self.path / LOCK_FILENAME, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            return True
        lock.release()
        return False

    # ------------------------------------------------------------------ what it holds

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_FILENAME

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS_FILENAME

    @property
    def curves(self) -> Path:
        return self.path / CURVES_FILENAME

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILENAME

    def record(self) -> dict[str, Any]:
        """``run.json``: the model, seed and data options, and how the run was started; checked field by field,
        so a damaged file is one line, not a KeyError mid-resume."""
        from aperture_zoo.registry import ModelSpec

        run = self._read_json(RUN_FILENAME)

        def whole(v: Any, optional: bool = False) -> bool:
            return (v is None and optional) or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)

        problem = None
        try:
            spec = ModelSpec.from_dict(run.get("spec"))  # type: ignore[arg-type]
            if run.get("arch") != spec.arch_dict():
                problem = "'arch' does not match 'spec'"
        except (ApertureError, TypeError, ValueError) as exc:
            problem = f"'spec': {exc}"
        for key, optional in (("seed", False), ("subset", True), ("test_subset", True)):
            if problem is None and not whole(run.get(key), optional):
                problem = f"{key!r} is {run.get(key)!r}"
        val = run.get("val_split")
        if problem is None and not (isinstance(val, (int, float)) and not isinstance(val, bool) and val >= 0):
            problem = f"'val_split' is {val!r}"
        if problem:
            raise CheckpointError(f"{str(self.path / RUN_FILENAME)!r} is damaged ({problem}); this run cannot be "
                                  "resumed: start a new one")
        return run

    def recipe(self) -> Recipe:
        """The recipe the run was trained with; a clear error if this is not a run folder or the file is damaged."""
        from .recipes import RecipeError

        try:
            return Recipe.from_dict(self._read_json(RECIPE_FILENAME))
        except RecipeError as exc:
            raise CheckpointError(f"{str(self.path / RECIPE_FILENAME)!r} is damaged ({exc}); this run cannot be "
                                  "resumed: start a new one") from None

    def metrics(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl``; a torn last line (``kill -9`` mid-append) is skipped, not fatal.

        Rows are appended before the epoch's checkpoint is written, so a torn row always belongs to an
        epoch the checkpoint does not include and would be dropped on resume anyway.
        """
        return self._read_rows()[0]

    def _read_rows(self) -> tuple[list[dict[str, Any]], int]:
        """The log's rows, and how many non-blank lines were not JSON (torn by a kill, or cut short by hand)."""
        if not self.metrics_path.exists():
            return [], 0
        rows, torn = [], 0
        for line in self.metrics_path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                torn += bool(line.strip())
                continue
            if isinstance(row, dict) and isinstance(row.get("epoch"), int) and not isinstance(row["epoch"], bool):
                rows.append(row)
        return rows, torn

    def log_sha256(self, epochs_done: int) -> str:
        """The SHA-256 of the log a checkpoint after ``epochs_done`` epochs covers: its rows up to that epoch,
        as ``_settle`` writes them (the same bytes the trainer appended), so a resume that trims later rows
        or a torn line still matches, and an edited row or another run's log does not."""
        return hashlib.sha256(_log_text(r for r in self.metrics() if r["epoch"] <= epochs_done).encode()).hexdigest()

    def _read_json(self, name: str) -> dict[str, Any]:
        path = self.path / name
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError(f"a JSON object was expected, not {type(data).__name__}")
            return data
        except FileNotFoundError:
            raise CheckpointError(
                f"{str(self.path)!r} is not a run directory of `aperture train` ({name} is missing)"
            ) from None
        except (OSError, ValueError) as exc:  # a directory in its place, truncated or hand-edited JSON
            raise CheckpointError(f"{str(path)!r} is unreadable ({exc}); this run cannot be resumed") from None

    # ------------------------------------------------------------------ writing (rank 0 only)

    def start(self, recipe: Recipe, record: dict[str, Any]) -> list[dict[str, Any]]:
        """Write a new run's settings and an empty metrics log; its rows so far (none)."""
        for name, data in ((RECIPE_FILENAME, recipe.to_dict()), (RUN_FILENAME, record)):
            atomic_write_text(self.path / name, json.dumps(data, indent=2, sort_keys=True) + "\n")
        return self._settle([])

    def rewrite_settings(self, recipe: Recipe, record: dict[str, Any]) -> None:
        """A resumed run's new settings (a lower lr, recorded in ``lr_changes``), written before it trains on."""
        for name, data in ((RECIPE_FILENAME, recipe.to_dict()), (RUN_FILENAME, record)):
            atomic_write_text(self.path / name, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def reopen(self, epochs_done: int, say: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
        """Trim a resumed run's metrics to its checkpoint (rows of epochs written, then killed, go).

        ``say``: a line that cannot be read (torn by a kill mid-append) is dropped with a note, not in silence.
        """
        rows, torn = self._read_rows()
        if torn and say is not None:
            say(f"note: {self.metrics_path} had {torn} line(s) cut off mid-write (the run was killed while logging); "
                f"dropped: the log keeps its rows up to the checkpoint (epoch {epochs_done}) and adds the epochs "
                "trained from here")
        return self._settle([row for row in rows if row["epoch"] <= epochs_done])

    def _settle(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write ``rows`` as the metrics log and remove the temporary files of writes cut short by kill -9."""
        atomic_write_text(self.metrics_path, _log_text(rows))
        for name in _WRITTEN_ATOMICALLY:
            for stale in self.path.glob(f"{name}.tmp*"):
                stale.unlink(missing_ok=True)
        return rows

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(_log_text([row]))


def _log_text(rows: Iterable[dict[str, Any]]) -> str:
    """The log's bytes for ``rows``: one JSON object a line, the one way the trainer writes it."""
    return "".join(json.dumps(row) + "\n" for row in rows)
