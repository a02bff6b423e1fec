"""Progress of a multi-step export for a person watching: a bar with ETA, or a line per step.

On a terminal each step gets a transient rich progress bar (with images done and time left while
validating), so long validations are not a silent spinner. When the output is a pipe or a log
file, bars would be garbage: each step is one plain line with the seconds since the start, so a
log still shows where the time went and where a run stopped.
"""

from __future__ import annotations

import time
from typing import Any, Protocol


PIPED_INTERVAL_S = 30.0  # when not on a terminal: one line per step, plus one this often within a long step


class ExportProgress(Protocol):
    """What ``export_model`` reports: steps, and units (images) done within the current step."""

    def stage(self, text: str) -> None: ...

    def update(self, done: int, total: int) -> None: ...


class SilentProgress:
    """Reports nothing (the library default)."""

    def stage(self, text: str) -> None:
        pass

    def update(self, done: int, total: int) -> None:
        pass


class MessageProgress:
    """Adapts a plain ``callback(message)`` (the earlier interface): one call per step."""

    def __init__(self, callback: Any) -> None:
        self._callback = callback

    def stage(self, text: str) -> None:
        self._callback(text)

    def update(self, done: int, total: int) -> None:
        pass


class ConsoleProgress:
    """A transient bar with ETA on a terminal; one timestamped line per step otherwise.

    Use as a context manager around the export, so the terminal bar is cleaned up on errors too.
    """

    def __init__(self, console: Any) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.console = console
        self.interactive = bool(console.is_terminal)
        self._start = time.perf_counter()
        self._last_line = self._start
        self._task: Any = None
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=True, disable=not self.interactive,
        )

    def __enter__(self) -> ConsoleProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def stage(self, text: str) -> None:
        if not self.interactive:
            self._last_line = time.perf_counter()
            self.console.print(f"[{self._last_line - self._start:7.1f}s] {text}", highlight=False,
                               markup=False, soft_wrap=True)
            return
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(text, total=None)

    def update(self, done: int, total: int) -> None:
        if self.interactive and self._task is not None:
            self._progress.update(self._task, completed=done, total=total)
        elif not self.interactive and done < total and time.perf_counter() - self._last_line >= PIPED_INTERVAL_S:
            self._last_line = time.perf_counter()  # a log also shows a long validation moving
            self.console.print(f"[{self._last_line - self._start:7.1f}s]   {done:,}/{total:,}", highlight=False,
                               markup=False, soft_wrap=True)
