"""The training loop: device-resident data, bf16 autocast, DDP, atomic per-epoch checkpoints.

``fit(TrainConfig(...))`` is the library entry point; ``aperture train`` and ``torchrun -m
aperture_zoo.train`` are thin wrappers over it. ``fit`` reads top to bottom, one room at a time:
the run's settings (``settings.resolve_run``), its data on the device (``loader``), its network,
optimizer and step (``step``: a ``RunState`` that converts to and from a checkpoint), its folder
(``rundir.RunDir.open``), then per epoch ``train_epoch`` over the ``BatchStream`` (order and
augmentation as a pure function of seed, epoch and step), ``finish_epoch`` (evaluation, metrics
row), ``checkpoint``, and ``stop_if_asked``, the one place a run stops early.

The hot loop never reads a value back to the host per step: loss and accuracy are summed on the
device and read a few times a second (``SyncClock``), where the progress bar, the NaN/inf check
and, under DDP, the agreed stop decision happen together.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from aperture_zoo.model import ResNet
from aperture_zoo.progress import TrainProgress

from . import dataset_run
from . import distributed as D
from .augment import AugmentConfig
from aperture_zoo.device import autocast_dtype, device_name, eval_precision
from .calibrate import fit_val_calibration
from .evaluate import EvalResult, evaluate_sums, result_from_sums, split_logits
from .guard import epoch_problem, loss_problem, majority_share
from .loader import DeviceData, DeviceSplit, load_run_data
from .probe import probe_run
from .recipes import Recipe
from .rundir import RunDir
from .settings import (SYNC_INTERVAL_S, Run, TimeBudgetReached, TrainConfig, TrainingDiverged, TrainingError,
                       TrainingInterrupted, TrainResult, finished_run, resolve_run, with_run_options)
from .state import RunState
from .step import TrainStep, initial_state, lr_at, network
from .stream import BatchStream


def fit(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) one run and write its folder; see the module docstring."""
    if cfg.time_budget_s is not None and not cfg.time_budget_s > 0:
        raise TrainingError(f"--time-budget must be a positive number of seconds, not {cfg.time_budget_s}")
    data_from_run = cfg.resume is not None and cfg.data_dir is None
    cfg = with_run_options(cfg)
    info, device = D.setup(str(cfg.device))
    try:
        with contextlib.ExitStack() as stack:
            return _fit(cfg, info, device, stack, data_from_run)
    finally:
        D.cleanup(info)


def _fit(cfg: TrainConfig, info: D.DistInfo, device: torch.device, stack: contextlib.ExitStack,
         data_from_run: bool) -> TrainResult:
    """Set the run up, train its remaining epochs, write its outputs; every early stop is resumable."""
    budget = _Budget(cfg.time_budget_s, time.perf_counter())
    dataset_run.forget()
    run = resolve_run(cfg)
    done = finished_run(run, draw=info.is_main)  # complete already: its missing curves.png drawn, no more
    if done is not None:
        return done
    _refuse_early(cfg, run, info)
    if run.resume_dir is None:  # the dataset's classes and normalisation, the init weights (dataset_run.py)
        run.spec, run.record = D.decided_on_rank0(info, lambda: _new_run(cfg, run))
    data = load_run_data(cfg, run, info, device, data_from_run, _say if info.is_main else None)
    state = initial_state(run.spec, run.recipe, run.seed, info, device, run.ckpt,
                          prepare=dataset_run.prepare_model(run.record, run.ckpt is None, run.recipe.frozen_stages))
    if run.ckpt is None and run.recipe.probe_head and run.record.get("init"):  # LP-FT, before DDP copies rank 0
        run.record["probe"] = probe_run(run.recipe, run.record, state, data, device, show=info.is_main)
    step_fn = TrainStep(network(state.model, info, device, bool(cfg.compile)), state.optimizer,
                        autocast_dtype(run.recipe.precision, device))
    r = _Loop(cfg, info, device, run, _open_folder(cfg, run, info, stack), majority_share(data.train.labels.cpu().numpy()))
    rows = _first_rows(r, state)
    stream = BatchStream(data.train, run.recipe.batch_size, AugmentConfig.from_recipe(run.recipe), data.mean,
                         data.std, run.spec.num_classes, run.seed, rank=info.rank, world_size=info.world_size,
                         channels_last=run.recipe.channels_last)
    last: dict[str, Any] | None = None  # the newest epoch row of this call (all ranks)
    step_fn.model.train()
    bar = TrainProgress(cfg.progress and info.is_main, run.recipe.epochs, stream.steps, with_val=data.val is not None,
                        budget_s=cfg.time_budget_s if info.is_main else None)
    with _StopFlag() as stop, bar:
        while state.epoch < run.recipe.epochs:
            row, halted = train_epoch(r, state, step_fn, stream, stop, bar)
            if row is not None:  # the epoch ran to its end
                last = finish_epoch(r, state, data, row, bar)
                why = epoch_problem(last, run.recipe.epochs, r.majority_pct, run.spec.num_classes,  # guard.py
                                    probed="probe" in run.record)
                if why is not None:  # before its checkpoint: the last good one stays
                    raise r.diverged(state, why, state.epoch - 1, stream.steps)
                rows += [last] if info.is_main else []
            checkpoint(r, state, stream.steps)
            stop_if_asked(r, state, stream.steps, row, budget, halted, stop.signum)
    if last is None:  # resumed a run whose last epoch was already complete
        last = evaluate_epoch(r, state.eval_model, data, with_val=False, tta=run.recipe.final_tta)
    result = TrainResult(
        run_dir=r.folder.path, test_top1=last["test_top1"], test_loss=last["test_loss"], epochs=run.recipe.epochs,
        wall_time_s=state.elapsed["wall"],
        train_images_per_s=state.elapsed["images"] / max(state.elapsed["train"], 1e-9), metrics=rows,
        test_top1_flip_tta=last.get("test_top1_flip_tta"),
    )
    if info.is_main:
        # a held-out split calibrates the run: its calibrators, fitted by NLL, go into the metadata
        calibration = fit_val_calibration(*split_logits(state.eval_model, data.val.images, data.val.labels, data.mean,
                                                        data.std, run.recipe.eval_batch_size)) if data.val is not None else {}
        if calibration.get("calibration_not_fitted"):  # predict then says "uncalibrated", and the run says why
            _say(f"{calibration['calibration_not_fitted']}; predict gives uncalibrated probabilities")
        _write_outputs(result, state.eval_model, r, calibration)
    D.barrier(info)
    return result


def _say(msg: str) -> None:
    from aperture_zoo.terminal import say  # file and class names of the user's folder: through the gate

    say(msg)


def _new_run(cfg: TrainConfig, run: Run) -> tuple[Any, dict[str, Any]]:
    """Rank 0's view of a new run's dataset and init (decoded once; the other ranks read the cache)."""
    return dataset_run.new_run(run.spec, run.record, None if cfg.dataset is None else str(cfg.dataset), cfg.test_split,
                               None if cfg.init is None else str(cfg.init), cfg.freeze_backbone, cfg.data_dir,
                               bool(cfg.download), _say, cfg.val_split)


def _refuse_early(cfg: TrainConfig, run: Run, info: D.DistInfo) -> None:
    """What can be refused before the data is loaded: a ``--out`` in use, a batch the ranks cannot split."""
    if run.resume_dir is None and cfg.out_dir is not None:
        D.decided_on_rank0(info, lambda: RunDir.check_new(cfg.out_dir))  # type: ignore[arg-type]
    if run.recipe.batch_size % info.world_size:
        raise TrainingError(f"batch size {run.recipe.batch_size} does not split over {info.world_size} ranks; "
                            "use a multiple")


def _open_folder(cfg: TrainConfig, run: Run, info: D.DistInfo, stack: contextlib.ExitStack) -> RunDir:
    """Rank 0 claims the run's folder and holds its lock; every rank gets its name (for messages)."""
    resume = run.resume_dir is not None
    return RunDir(D.decided_on_rank0(info, lambda: RunDir.open(
        run.resume_dir if resume else cfg.out_dir, run.spec.name, stack, resume=resume, started=cfg.started).path))


def _first_rows(r: _Loop, state: RunState) -> list[dict[str, Any]]:
    """Rank 0 writes a new run's settings, or trims a resumed run's metrics to its checkpoint; the rows so far."""
    if not r.info.is_main:
        return []
    if r.run.ckpt is not None:
        before = r.folder.record()
        if any(r.run.record.get(k) != before.get(k) for k in ("lr_changes", "dataset_moves", "data_files")):
            r.folder.rewrite_settings(r.recipe, r.run.record)  # a lower lr, a moved folder or batch files recorded late
        return r.folder.reopen(epochs_done=state.epoch, say=_say)
    return r.folder.start(r.recipe, {**r.run.record, "world_size": r.info.world_size,
                                     "torch_version": torch.__version__})


@dataclass
class _Budget:
    """Whether one more epoch fits in ``seconds`` from ``start``, judged on the slowest epoch seen."""

    seconds: float | None
    start: float
    slowest: float = 0.0

    def fits_another(self, last_epoch_s: float) -> bool:
        self.slowest = max(self.slowest, last_epoch_s)
        if self.seconds is None:
            return True
        return time.perf_counter() - self.start + self.slowest <= self.seconds


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


class _StopFlag:
    """SIGINT/SIGTERM set a flag the loop reads between steps; handlers restored afterwards."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:  # a second Ctrl-C means "now"
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@dataclass
class _Loop:
    """What the loop's functions share and never change: the settings, this rank, the run and its folder."""

    cfg: TrainConfig
    info: D.DistInfo
    device: torch.device
    run: Run
    folder: RunDir
    majority_pct: float = 100.0  # training top-1 of always answering the most frequent class

    @property
    def recipe(self) -> Recipe:
        return self.run.recipe

    def diverged(self, state: RunState, what: str, epoch: int, step: int) -> TrainingDiverged:
        """The error for a run that diverged: where, and its last good checkpoint (the CLI adds a retry)."""
        kept = (f"The last good checkpoint ({state.saved_at}) is kept in {str(self.folder.path)!r}. "
                if state.saved_at else "No checkpoint had been written yet. ")
        return TrainingDiverged(
            f"the training {what} in epoch {epoch + 1}, by step {step}; stopped. {kept}"
            "Lower the learning rate (half of it), or add warm-up (warmup_fraction=0.1) or train in fp32 "
            "(precision=fp32)", self.folder.path, self.recipe, self.run.record, checkpointed=bool(state.saved_at))


def train_epoch(r: _Loop, state: RunState, step_fn: TrainStep, stream: BatchStream, stop: _StopFlag,
                bar: TrainProgress) -> tuple[dict[str, Any] | None, bool]:
    """Train ``state.epoch`` from ``state.step`` on, to its end or to a stop the ranks agreed on.

    Loss and accuracy are summed on the device. They are read back (one host sync) only when the
    clock says so and after the epoch's last step; the NaN check, the progress bar and, under DDP,
    the ranks' agreement to stop all happen at that read. Returns the epoch's training row (None
    when it stopped part-way, its time then counted) and whether a stop was agreed.
    """
    steps, first, started = stream.steps, state.step, time.perf_counter()
    clock = SyncClock(r.cfg.sync_interval_s, by_steps=r.info.enabled)
    clock.start(first)
    bar.start_epoch(state.epoch, first)
    local_n = torch.tensor(float(stream.local_batch), device=r.device, dtype=torch.float64)  # not one per step
    totals, halted = [0.0, 0.0, 0.0], False
    for step, batch in stream.epoch(state.epoch, first):
        step_fn.set_lr(lr_at(r.recipe, state.epoch * steps + step, steps))
        loss, correct = step_fn(batch)
        state.sums += torch.stack([loss.double() * local_n, correct.double(), local_n])
        if state.ema is not None:
            state.ema.update()
        state.step = done = step + 1
        if done == steps or clock.due(done) or (stop.signum and not r.info.enabled):
            totals, halted = _read_back(r, state, stop, time.perf_counter() - started, done - first, bar, clock)
            if halted and done < steps:
                secs = time.perf_counter() - started  # the partial epoch counts towards the run's time
                state.add_time(wall=secs, train=secs, images=(done - first) * stream.batch_size)
                state.sums.copy_(torch.tensor(totals, dtype=torch.float64))  # what the checkpoint keeps
                return None, True
    if r.device.type == "cuda":
        torch.cuda.synchronize(r.device)
    train_secs = time.perf_counter() - started
    images = (steps - first) * stream.batch_size
    state.add_time(train=train_secs, images=images)
    return {
        "epoch": state.epoch + 1, "lr": lr_at(r.recipe, (state.epoch + 1) * steps - 1, steps),
        "train_loss": totals[0] / max(totals[2], 1), "train_top1": 100 * totals[1] / max(totals[2], 1),
        "train_seconds": train_secs, "images_per_s": images / max(train_secs, 1e-9),
    }, halted


def _read_back(r: _Loop, state: RunState, stop: _StopFlag, secs: float, steps_done: int, bar: TrainProgress,
               clock: SyncClock) -> tuple[list[float], bool]:
    """The loop's one host sync: the epoch's totals over all ranks, checked finite, and the stop vote.

    One all-reduce carries the sums, each rank's stop flag and rank 0's elapsed seconds (the other
    ranks add 0), so every rank gets the same step time and sets the same next sync.
    """
    extra = torch.tensor([float(stop.signum > 0), secs if r.info.is_main else 0.0], device=r.device,
                         dtype=torch.float64)
    shown = D.all_reduce_sum(torch.cat([state.sums, extra]), r.info).tolist()
    problem = loss_problem(shown[0] / max(shown[2], 1), r.run.spec.num_classes)  # nan, inf or exploding: guard.py
    if problem is not None:
        raise r.diverged(state, problem, state.epoch, state.step)
    clock.synced(state.step, shown[4] / max(steps_done, 1))
    bar.update(state.step, shown[0] / max(shown[2], 1), 100 * shown[1] / max(shown[2], 1),
               steps_done * r.recipe.batch_size / max(shown[4], 1e-9))
    return shown[:3], shown[3] > 0


def evaluate_epoch(r: _Loop, model: nn.Module, data: DeviceData, with_val: bool = True,
                   tta: bool = False) -> dict[str, Any]:
    """Test (and validation) loss and top-1 of ``model``: each rank scores a shard, sums are all-reduced.

    ``tta``: the test set is also scored with flip TTA, under names of its own (``test_top1_flip_tta``):
    ``test_top1`` is always the plain forward pass, the figure every record and summary compares.
    """
    def score(split: DeviceSplit, flip: bool = False) -> EvalResult:
        part = slice(r.info.rank, None, r.info.world_size)
        sums = evaluate_sums(model, split.images[part], split.labels[part], data.mean, data.std,
                             r.run.spec.num_classes, r.recipe.eval_batch_size,
                             autocast_dtype(eval_precision(r.recipe.precision), r.device), r.recipe.channels_last,
                             tta=flip)
        return result_from_sums(D.all_reduce_sum(sums, r.info), split.classes)

    test = score(data.test)
    out: dict[str, Any] = {"test_loss": test.loss, "test_top1": test.top1, "test_images": test.num_images}
    if tta:
        flipped = score(data.test, flip=True)
        out.update(test_loss_flip_tta=flipped.loss, test_top1_flip_tta=flipped.top1)
    if with_val and data.val is not None:
        val = score(data.val)
        out.update(val_loss=val.loss, val_top1=val.top1)
    return out


def finish_epoch(r: _Loop, state: RunState, data: DeviceData, row: dict[str, Any],
                 bar: TrainProgress) -> dict[str, Any]:
    """Evaluate when due, count the epoch's time, log its row, and move ``state`` to the next epoch."""
    started = time.perf_counter()
    final, every = row["epoch"] == r.recipe.epochs, r.recipe.eval_every
    if final or (every > 0 and row["epoch"] % every == 0):
        row.update(evaluate_epoch(r, state.eval_model, data, tta=final and r.recipe.final_tta))
    row["epoch_seconds"] = row["train_seconds"] + time.perf_counter() - started
    state.add_time(wall=row["epoch_seconds"])
    state.next_epoch()
    if r.info.is_main:
        r.folder.append_metrics(row)
        bar.epoch_done(row)
    return row


def checkpoint(r: _Loop, state: RunState, steps: int) -> None:
    """Save ``state`` on rank 0, unless its weights are not finite (a clear error instead).

    A finite loss does not prove finite weights: the last update of an epoch can overflow them.
    Every rank checks (DDP keeps them identical), so all ranks stop together.
    """
    if not state.weights_finite():
        at_boundary = state.step == 0
        raise r.diverged(state, "weights became nan/inf (the loss was still finite)",
                         state.epoch - at_boundary, steps if at_boundary else state.step)
    if r.info.is_main:
        state.save(r.folder.checkpoint, arch=r.run.spec.arch_dict(), seed=r.run.seed, run_id=r.run.record.get("run_id"),
                   recipe_sha256=r.run.recipe.training_sha256(), lr=r.run.recipe.lr,
                   metrics_sha256=r.folder.log_sha256(state.epoch))  # resume refuses a log changed since
    else:
        state.saved_at = state.where


def stop_if_asked(r: _Loop, state: RunState, steps: int, row: dict[str, Any] | None, budget: _Budget,
                  halted: bool, signum: int) -> None:
    """The one way a run stops before its last epoch: after its checkpoint, saying where it is kept.

    ``halted``: the ranks agreed on a stop at a sync point (part-way through an epoch, or at its last
    step); a single process also stops for a signal that came during evaluation. The time budget is
    judged after each whole epoch (``row``), by rank 0 for every rank.
    """
    over = row is not None and D.broadcast_object(not budget.fits_another(row["epoch_seconds"]), r.info)
    if state.epoch >= r.recipe.epochs:
        return
    saved = f"checkpoint saved in {str(r.folder.path)!r}"
    if over:
        raise TimeBudgetReached(
            f"time budget of {r.cfg.time_budget_s:g}s reached after epoch {state.epoch}/{r.recipe.epochs} "
            f"(another epoch takes about {budget.slowest:.0f}s); {saved}", r.folder.path, state.epoch)
    if halted or (signum and not r.info.enabled):
        signum = signum or signal.SIGTERM
        where = (f"in epoch {state.epoch + 1} at step {state.step}/{steps}" if state.step
                 else f"after epoch {state.epoch}")
        raise TrainingInterrupted(f"interrupted by {_signame(signum)} {where}; {saved}", r.folder.path, signum)


def _signame(signum: float) -> str:
    try:
        return signal.Signals(int(signum)).name
    except ValueError:
        return f"signal {int(signum)}"


def _write_outputs(result: TrainResult, model: nn.Module, r: _Loop, calibration: dict[str, Any] | None = None) -> None:
    """model.safetensors (with provenance metadata) and curves.png; the final epoch's numbers only."""
    from aperture_zoo.weights import save_weights

    from .plots import plot_curves

    if not isinstance(model, ResNet):  # SyncBatchNorm-converted modules keep the ResNet class
        raise TrainingError("internal: expected a ResNet to save")
    recipe, record = r.recipe, r.run.record
    metadata = {
        "test_top1": round(result.test_top1, 4), "test_loss": round(result.test_loss, 6),
        "epochs": result.epochs, "recipe": recipe.to_dict(), "seed": record["seed"],
        "train_device": device_name(r.device), "world_size": r.info.world_size,
        "wall_time_s": round(result.wall_time_s, 3), "train_images_per_s": round(result.train_images_per_s, 1),
        "subset": record["subset"], "val_split": record["val_split"], "test_subset": record["test_subset"],
        "ema": recipe.ema_decay > 0, **(calibration or {}), **dataset_run.weights_metadata(record),
        **({"lr_changes": record["lr_changes"]} if record.get("lr_changes") else {}),
    }
    if result.test_top1_flip_tta is not None:  # declared apart: test_top1 stays the plain forward pass
        metadata["test_top1_flip_tta"] = round(result.test_top1_flip_tta, 4)
    from aperture_zoo.files import file_sha256

    metadata["metrics_sha256"] = file_sha256(r.folder.metrics_path)  # the log, complete: a card ships only this one
    save_weights(model, r.folder.weights, metadata)

    plot_curves(r.folder.metrics(), r.folder.curves, title=f"{model.spec.name} ({recipe.name})",
                made_from={"weights_sha256": file_sha256(r.folder.weights)})
