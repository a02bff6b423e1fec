"""What a person watching a long job sees: one policy for training, export and evaluation.

On a terminal: a rich progress bar with items done and time left. In a pipe or a log file bars
would be garbage, so there: plain lines (a line per export step with the seconds since the start,
a start line for an evaluation, a table row per training epoch). Everything fits 80 columns. rich
is imported when a bar is made, so importing this module costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol


def si(value: float) -> str:
    """``950`` -> ``950``, ``12345`` -> ``12.3k``, ``2.5e6`` -> ``2.5M``: throughput in a few columns."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}"


def seconds(value: float) -> str:
    """Seconds in at most 6 columns: ``0.42s``, ``12.3s``, ``123s``, ``12m05s``, ``2h05m``."""
    if value < 10:
        return f"{value:.2f}s"
    if value < 100:
        return f"{value:.1f}s"
    if value < 1000:
        return f"{value:.0f}s"
    minutes = int(value // 60)
    return f"{minutes}m{int(value % 60):02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _bar(console: Any, lead: list[Any], middle: list[Any] = (), *, bar_width: int | None = None,  # type: ignore[assignment]
         transient: bool, enabled: bool, eta: bool = True) -> Any:
    """The one bar: ``lead`` columns, the bar, done/total, ``middle`` columns, then the time left (``eta``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    tail = [TextColumn("ETA"), TimeRemainingColumn()] if eta else []
    return Progress(*lead, BarColumn(bar_width=bar_width), MofNCompleteColumn(), *middle, *tail,
                    console=console, transient=transient, disable=not enabled)


# When not on a terminal (a log): besides the start of each step, a line this often within a long one.
PIPED_INTERVAL_S = 30.0


# ----------------------------------------------------------------------- steps of a job (export)


class StepProgress(Protocol):
    """What a multi-step job reports: steps, and units (images) done within the current step."""

    def stage(self, text: str) -> None: ...

    def update(self, done: int, total: int) -> None: ...


class SilentProgress:
    """Reports nothing (the library default)."""

    def stage(self, text: str) -> None:
        pass

    def update(self, done: int, total: int) -> None:
        pass


class MessageProgress:
    """Adapts a plain ``callback(message)``: one call per step."""

    def __init__(self, callback: Callable[[str], Any]) -> None:
        self._callback = callback

    def stage(self, text: str) -> None:
        self._callback(text)

    def update(self, done: int, total: int) -> None:
        pass


class ConsoleProgress:
    """A transient bar per step on a terminal; one timestamped line per step otherwise.

    Use as a context manager around the job, so the terminal bar is cleaned up on errors too.
    """

    def __init__(self, console: Any) -> None:
        from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = console
        self.interactive = bool(console.is_terminal)
        self._start = time.perf_counter()
        self._last_line = self._start
        self._task: Any = None
        self._progress = _bar(console, [SpinnerColumn(), TextColumn("{task.description}")], [TimeElapsedColumn()],
                              transient=True, enabled=self.interactive)

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


# ----------------------------------------------------------------------- counting items (evaluation)


@contextmanager
def counting(console: Any, total: int, what: str) -> Iterator[Callable[[int], None]]:
    """``advance(n)`` for a bar over ``total`` items on a terminal; when piped, a start line and then
    one every ``PIPED_INTERVAL_S`` seconds, so a long evaluation is never silent in a log."""
    if not console.is_terminal:
        console.print(what, highlight=False)
        start, done, last = time.perf_counter(), [0], [time.perf_counter()]

        def advance(n: int) -> None:
            done[0] += n
            if time.perf_counter() - last[0] >= PIPED_INTERVAL_S and done[0] < total:
                last[0] = time.perf_counter()
                console.print(f"  {done[0]:,}/{total:,} after {last[0] - start:.0f}s", highlight=False)

        yield advance
        return
    from rich.progress import TextColumn

    with _bar(console, [TextColumn(what)], transient=True, enabled=True) as progress:
        task = progress.add_task("count", total=total)
        yield lambda n: progress.advance(task, n)


# ----------------------------------------------------------------------- epochs of a training run


class EpochTable:
    """Finished epochs as rows of a table under one header, like airbench's: no labels repeated per row.

    Columns: epoch, training loss and top-1, validation top-1 (runs with a hold-out only), test
    loss and top-1 (blank in epochs that are not evaluated), learning rate, the epoch's seconds and
    training images per second. A 999-epoch run with every column fits 80 columns.
    """

    def __init__(self, epochs: int, with_val: bool) -> None:
        self.epochs = epochs
        self.columns = [("epoch", max(5, 2 * len(str(epochs)) + 1)), ("loss", 6), ("train", 7)]
        self.columns += [("val", 7)] if with_val else []
        self.columns += [("test loss", 9), ("test", 7), ("lr", 7), ("time", 6), ("img/s", 6)]

    def _join(self, cells: dict[str, str]) -> str:
        return "  ".join(f"{cells.get(name, ''):>{width}}" for name, width in self.columns).rstrip()

    def header(self) -> str:
        return self._join({name: name for name, _ in self.columns})

    def line(self, row: dict[str, Any]) -> str:
        """One metrics row (as in metrics.jsonl) under the header."""
        cells = {"epoch": f"{row['epoch']}/{self.epochs}", "loss": f"{row['train_loss']:.3f}",
                 "train": f"{row['train_top1']:.2f}%", "lr": f"{row['lr']:.2g}",
                 "time": seconds(row["epoch_seconds"]), "img/s": si(row["images_per_s"])}
        if "val_top1" in row:
            cells["val"] = f"{row['val_top1']:.2f}%"
        if "test_top1" in row:
            cells.update({"test loss": f"{row['test_loss']:.3f}", "test": f"{row['test_top1']:.2f}%"})
        return self._join(cells)


class TrainProgress:
    """The live bar of rank 0 (or nothing), and the table of finished epochs on stderr.

    The table is printed even when the bar is off (``--no-progress``): it is the run's log.
    """

    def __init__(self, enabled: bool, epochs: int, steps: int, *, with_val: bool = False,
                 console: Any = None, budget_s: float | None = None,
                 now: Callable[[], float] = time.perf_counter) -> None:
        from .terminal import console as gated_console
        from rich.progress import TextColumn

        self.epochs = epochs
        self.steps = steps
        self.table = EpochTable(epochs, with_val)
        self.budget_s = budget_s  # warned about once if the first epoch alone will not fit in it
        self._now = now
        self._progress = _bar(
            console or gated_console(stderr=True), [TextColumn("[bold]epoch {task.fields[epoch]}")],
            [TextColumn("loss {task.fields[loss]} acc {task.fields[acc]} {task.fields[ips]} img/s"),
             TextColumn("run ETA {task.fields[eta]}")],  # the whole run's, at this epoch's speed (the bar: the epoch)
            bar_width=8, transient=False, enabled=enabled, eta=False,
        )
        self._task: Any = None
        self._header_shown = False
        self._epoch = 0
        self._epoch_start = (0.0, 0)
        self._warned = budget_s is None

    @property
    def console(self) -> Any:
        return self._progress.console

    def __enter__(self) -> TrainProgress:
        self._progress.__enter__()
        self._task = self._progress.add_task("train", total=self.steps, epoch="", loss="-", acc="-", ips="-", eta="-")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def start_epoch(self, epoch: int, first_step: int) -> None:
        """``epoch`` counts from 0; a resumed epoch starts its bar at ``first_step``."""
        self._progress.reset(self._task, total=self.steps, completed=first_step,
                             epoch=f"{epoch + 1}/{self.epochs}", loss="-", acc="-", ips="-", eta="-")
        self._epoch = epoch
        self._epoch_start = (self._now(), first_step)

    def run_eta(self, done: int) -> tuple[float, float] | None:
        """Seconds left in this epoch and in the whole run, at this epoch's speed so far (None: too early)."""
        start, first = self._epoch_start
        elapsed, steps = self._now() - start, done - first
        if steps <= 0 or elapsed <= 0:
            return None
        per_step = elapsed / steps
        epoch_left = (self.steps - done) * per_step
        return epoch_left, epoch_left + (self.epochs - self._epoch - 1) * self.steps * per_step

    def update(self, done: int, loss: float, top1: float, images_per_s: float) -> None:
        eta = self.run_eta(done)
        self._progress.update(self._task, completed=done, loss=f"{loss:.3f}", acc=f"{top1:.1f}%",
                              ips=si(images_per_s), eta="-" if eta is None else seconds(eta[1]))
        self._warn_if_over_budget(done)

    def _warn_if_over_budget(self, done: int) -> None:
        """Say early (a few seconds in) when even the first epoch cannot fit the time budget."""
        if self._warned or self._epoch != 0 or self._now() - self._epoch_start[0] < 3.0:
            return
        eta = self.run_eta(done)
        if eta is None:
            return
        self._warned = True
        epoch_s = self._now() - self._epoch_start[0] + eta[0]
        if epoch_s > self.budget_s:  # type: ignore[operator]
            self.console.print(
                f"warning: one epoch takes about {seconds(epoch_s)} here, more than the time budget of "
                f"{seconds(self.budget_s)} (--time-budget/--deadline); the first epoch runs to its end anyway, "  # type: ignore[arg-type]
                "so this call will overrun it", highlight=False, markup=False)

    def epoch_done(self, row: dict[str, Any]) -> None:
        lines = [] if self._header_shown else [self.table.header()]
        self._header_shown = True
        for text in [*lines, self.table.line(row)]:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)
