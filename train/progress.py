"""What a person watching a training run sees: a live bar, and one line per finished epoch.

The loop reads its device-side counters back only when ``SyncClock`` says so: a few times a second
whatever a step costs, so the bar moves on a slow CPU and a fast GPU is not stalled. Both the bar and
the table of finished epochs fit an 80-column terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

SYNC_INTERVAL_S = 0.25  # at most about 4 host syncs a second


class SyncClock:
    """When the training loop next reads its counters back (one host sync): about every ``interval`` s.

    One process looks at the clock after each step (``time.perf_counter``, no device sync). The
    ranks of a DDP run must sync at the same steps, so there the clock counts steps: each sync sets
    the next one from the seconds per step that rank 0 measured and every rank received in that sync.
    """

    def __init__(self, interval: float = SYNC_INTERVAL_S, by_steps: bool = False,
                 now: Callable[[], float] = time.perf_counter) -> None:
        self.interval = interval
        self.by_steps = by_steps
        self._now = now
        self.start(0)

    def start(self, step: int) -> None:
        """A new epoch (or a resumed one) starts at ``step``: the first sync is one step later by steps."""
        self._last = self._now()
        self._next_step = step + 1

    def due(self, done: int) -> bool:
        if self.by_steps:
            return done >= self._next_step
        return self._now() - self._last >= self.interval

    def synced(self, done: int, seconds_per_step: float) -> None:
        """A sync happened after step ``done``; ``seconds_per_step`` must be the same on every rank."""
        self._last = self._now()
        self._next_step = done + max(1, int(self.interval / max(seconds_per_step, 1e-9)))


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
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.epochs = epochs
        self.steps = steps
        self.table = EpochTable(epochs, with_val)
        self.budget_s = budget_s  # warned about once if the first epoch alone will not fit in it
        self._now = now
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(bar_width=8), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]} acc {task.fields[acc]} {task.fields[ips]} img/s"),
            TextColumn("run ETA {task.fields[eta]}"),  # the whole run's, at this epoch's speed (the bar shows the epoch's)
            console=console or Console(stderr=True), disable=not enabled, transient=False,
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
                              ips=si(images_per_s),
                              eta="-" if eta is None else seconds(eta[1]))
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
