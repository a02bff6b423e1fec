"""The training loop: device-resident data, bf16 autocast, DDP, atomic per-epoch checkpoints.

``fit(TrainConfig(...))`` is the library entry point; ``aperture train`` and ``torchrun -m
aperture_zoo.train`` are thin wrappers over it. ``_fit`` reads top to bottom: resolve the run, load
the data, build the ``RunState`` (``state.py``: network, optimizer, EMA, position; it converts to and
from a checkpoint), then per epoch ``train_epoch`` over the ``BatchStream`` (``stream.py``: order and
augmentation as a pure function of seed, epoch and step), ``finish_epoch`` (``evaluate_epoch``,
metrics row), ``checkpoint``, and ``_stop_if_asked``, the one place a run stops early.

The hot loop never reads a value back to the host per step: loss and accuracy are summed on the
device and read a few times a second (``progress.SyncClock``), where the progress bar, the NaN/inf
check and, under DDP, the agreed stop decision happen together. The run-directory helpers (claim,
lock, resume options, retry commands) come first; the loop follows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shlex
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aperture_zoo.data import DataError, default_data_dir, locate
from aperture_zoo.errors import ApertureError
from aperture_zoo.model import ResNet, create_model
from aperture_zoo.registry import ModelSpec, get_spec

from aperture_zoo.files import CURVES_FILENAME, METRICS_FILENAME, WEIGHTS_FILENAME, atomic_write_text

from . import distributed as D
from .augment import AugmentConfig, Batch
from .checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from .device import autocast_dtype, device_name
from .evaluate import EvalResult, evaluate_sums, result_from_sums
from .loader import DeviceSplit, load_splits
from .progress import SYNC_INTERVAL_S, SyncClock, TrainProgress
from .recipes import FAST, RECIPES, Recipe, RecipeError
from .state import EMA, RunState
from .stream import BatchStream

RECIPE_NAME = "recipe.json"
RUN_NAME = "run.json"
LOCK_NAME = ".lock"
WEIGHTS_NAME, METRICS_NAME, CURVES_NAME = WEIGHTS_FILENAME, METRICS_FILENAME, CURVES_FILENAME  # earlier names
# What a run directory holds before its first checkpoint: such a folder may be started again.
_PRE_CHECKPOINT_FILES = frozenset({METRICS_FILENAME, RECIPE_NAME, RUN_NAME, LOCK_NAME})
# Files written through a temporary sibling (``<name>.tmp<pid>``) that a kill -9 can leave behind.
_WRITTEN_ATOMICALLY = (CHECKPOINT_NAME, RUN_NAME, RECIPE_NAME, METRICS_FILENAME)
_T = TypeVar("_T")


class TrainingError(ApertureError, RuntimeError):
    """Training cannot go on (diverged, impossible settings); the message says what to change."""


class TrainingInterrupted(ApertureError, RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was saved and the message says how to resume."""

    def __init__(self, message: str, run_dir: Path, signum: int) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.signum = signum


class TimeBudgetReached(TrainingInterrupted):
    """The run's time budget would not fit another epoch: checkpointed at an epoch boundary, resumable."""

    def __init__(self, message: str, run_dir: Path, epoch: int) -> None:
        super().__init__(message, run_dir, 0)
        self.epoch = epoch


@dataclass
class TrainConfig:
    """One run. ``None`` means "the default", or on ``resume`` "as the run was started".

    A run's ``run.json`` records its data folder (absolute), ``download``, ``device`` and
    ``compile``, so ``--resume DIR`` alone continues it as it was; a value given here wins (data
    may have moved). ``download``: fetch CIFAR-10 when it is not in ``data_dir`` (offline, the
    error says how to point at a local copy instead). Defaults: the default data folder,
    ``download=True``, ``device="auto"``, ``compile=False``.
    """

    model: str | ModelSpec | None = None
    recipe: Recipe | None = None
    seed: int | None = None
    data_dir: str | os.PathLike[str] | None = None
    download: bool | None = None
    subset: int | None = None
    test_subset: int | None = None
    val_split: float | None = None
    device: str | None = None
    compile: bool | None = None
    out_dir: str | os.PathLike[str] | None = None
    resume: str | os.PathLike[str] | None = None
    progress: bool = True
    sync_interval_s: float = SYNC_INTERVAL_S  # how often the loop reads loss/accuracy back (one host sync)
    time_budget_s: float | None = None  # this call's training time; stops at the epoch boundary before it

    def __post_init__(self) -> None:
        if self.seed is not None and (isinstance(self.seed, bool) or not 0 <= int(self.seed) < 2**32):
            raise TrainingError(f"--seed must be in 0..{2**32 - 1} (numpy and torch take unsigned seeds), got {self.seed}")


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


@dataclass
class TrainResult:
    run_dir: Path
    test_top1: float
    test_loss: float
    epochs: int
    wall_time_s: float
    train_images_per_s: float
    metrics: list[dict[str, Any]] = field(default_factory=list)
    already_complete: bool = False  # --resume of a finished run: nothing was trained or written


# --------------------------------------------------------------------------- schedule & optimizer


def lr_at(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Learning rate of global step ``step``: a pure function, so resuming needs no scheduler state."""
    total = recipe.epochs * steps_per_epoch
    warm = int(round(recipe.warmup_fraction * total))
    peak, final = recipe.lr, recipe.lr * recipe.final_lr_fraction
    if step < warm:
        return peak * (step + 1) / warm
    if recipe.schedule == "constant":
        return peak
    progress = (step - warm) / max(total - warm, 1)
    if recipe.schedule == "onecycle":
        return peak + (final - peak) * progress
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def build_optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """The recipe's optimizer; fused (or multi-tensor) kernels on CUDA, weight decay on weights only."""
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.decay_norm_and_bias:
        groups: list[dict[str, Any]] = [{"params": params, "weight_decay": recipe.weight_decay}]
    else:
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": recipe.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
    cuda = device.type == "cuda"
    if recipe.optimizer == "sgd":
        nesterov = recipe.nesterov and recipe.momentum > 0
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=nesterov,
                               fused=True if cuda else None)
    if recipe.optimizer == "adadelta":
        return torch.optim.Adadelta(groups, lr=recipe.lr, foreach=True if cuda else None)
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(recipe.momentum, 0.999), fused=True if cuda else None)


class TrainStep:
    """Forward, soft-target cross-entropy, backward and optimizer step for one (local) batch.

    Returns the mean loss and the number of correct top-1 predictions as device tensors.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, autocast_dtype: torch.dtype | None):
        self.model = model
        self.optimizer = optimizer
        self.autocast_dtype = autocast_dtype

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor]:
        dev = batch.inputs.device
        with torch.autocast(dev.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            logits = self.model(batch.inputs)
        logits = logits.float()
        loss = torch.sum(-batch.targets * F.log_softmax(logits, dim=1), dim=1).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        correct = (logits.detach().argmax(1) == batch.labels).sum()
        return loss.detach(), correct


# --------------------------------------------------------------------------- run directory


def _timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _default_run_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{_timestamp()}"


def check_new_run_dir(path: str | os.PathLike[str]) -> None:
    """Refuse to start a new run in ``path`` unless it is missing, empty, or a run that never checkpointed.

    A run that stopped before its first checkpoint left only its settings there, so starting it
    again loses nothing; anything else (a checkpointed run, someone's files) is never overwritten.
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise TrainingError(f"--out {str(path)!r} is a file, not a folder; choose another --out")
    if (path / CHECKPOINT_NAME).exists():
        raise TrainingError(
            f"{str(path)!r} already holds a training run; continue it with --resume {path} "
            "or choose another --out"
        )
    other = sorted(p.name for p in path.iterdir() if p.name not in _PRE_CHECKPOINT_FILES
                   and not p.name.startswith(tuple(f"{name}.tmp" for name in _WRITTEN_ATOMICALLY)))
    if other:
        raise TrainingError(
            f"--out {str(path)!r} is not empty (it holds {other[0]!r}{f' and {len(other) - 1} more' if len(other) > 1 else ''}) "
            "and is not a run of `aperture train`; choose a new or empty folder, or leave out --out "
            "for a fresh runs/NAME-TIME"
        )


def claim_run_dir(requested: str | os.PathLike[str] | None, name: str) -> Path:
    """Create the directory of a new run, never one another run already uses.

    ``requested`` (``--out``) must pass ``check_new_run_dir``. Without it the run gets
    ``runs/NAME-YYYYmmdd-HHMMSS``, created exclusively: a second run started in the same second
    gets ``...-2`` (then ``-3``, ...) instead of sharing the folder.
    """
    if requested is not None:
        path = Path(requested)
        check_new_run_dir(path)
        path.mkdir(parents=True, exist_ok=True)
        return path
    base = _default_run_dir(name)
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise TrainingError(f"could not create a new run folder beside {str(base)!r}; pass --out")


@contextlib.contextmanager
def _run_lock(run_dir: Path):  # type: ignore[no-untyped-def]
    """Hold an exclusive lock on the run directory while training (released when the process dies).

    Two processes writing one run directory interleave their metrics and overwrite each other's
    weights; the second is refused instead. Needs ``fcntl`` (POSIX); elsewhere it is a no-op.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(run_dir / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise TrainingError(
                f"{str(run_dir)!r} is in use by another training process; wait for it to finish, or "
                "start a new run (leave out --out for a fresh folder)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _in_use(run_dir: Path) -> bool:
    """Whether another process holds the run directory's lock right now (see ``_run_lock``)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return False
    if not (run_dir / LOCK_NAME).is_file():
        return False
    with open(run_dir / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _decided_on_rank0(info: D.DistInfo, decide: Callable[[], _T]) -> _T:
    """Run ``decide`` on rank 0 only and hand every rank its result, or the ApertureError it raised.

    File-system decisions (which folder, is the data there) must be taken once: ranks deciding
    separately could pick different folders, and a rank that fails alone would leave the others
    waiting at the next collective.
    """
    value: Any = None
    error: ApertureError | None = None
    if info.is_main:
        try:
            value = decide()
        except ApertureError as exc:
            error = exc
    value, error = D.broadcast_object((value, error), info)  # type: ignore[misc]
    if error is not None:
        raise error
    return value


def _data_root(data_dir: str | os.PathLike[str] | None) -> str:
    """The data folder as an absolute path, so a resume from another directory finds it too."""
    return str(Path(data_dir if data_dir is not None else default_data_dir()).expanduser().resolve())


def with_run_options(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every option left at ``None`` filled in: on resume as the run was started, else the defaults.

    Runs from before these options were recorded fall back to the defaults.
    """
    saved = _read_json(Path(cfg.resume) / RUN_NAME) if cfg.resume is not None else {}
    changes: dict[str, Any] = {}
    for key, default in (("download", True), ("device", "auto"), ("compile", False)):
        if getattr(cfg, key) is None:
            changes[key] = saved.get(key, default)
    if cfg.data_dir is None and saved.get("data_dir"):
        changes["data_dir"] = saved["data_dir"]
    return dataclasses.replace(cfg, **changes)


def resume_command(run_dir: str | os.PathLike[str]) -> str:
    """The command that continues a checkpointed run: everything else comes from its run.json."""
    return f"aperture train --resume {shlex.quote(str(run_dir))}"


def retry_command(spec: ModelSpec, recipe: Recipe, run: dict[str, Any], cfg: TrainConfig,
                  out: str | os.PathLike[str] | None = None, **changes: Any) -> str:
    """The ``aperture train`` command line that starts this run again, with recipe ``changes``.

    It names every option, so it reproduces the run wherever it is typed; without ``out`` the new
    run gets a fresh folder. Recipe fields other than the named recipe's become ``--set``.
    """
    args = ["aperture", "train", spec.name]
    try:
        base_arch = get_spec(spec.name).arch_dict()
    except ApertureError:  # a spec registered by a script: the command cannot name it
        base_arch = spec.arch_dict()
    for key, value in spec.arch_dict().items():
        if key != "name" and value != base_arch[key]:
            text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
            args += ["--arch", f"{key}={text}"]
    wanted = recipe.replace(**changes) if changes else recipe
    base = RECIPES.get(recipe.name, FAST)
    args += ["--recipe", base.name]
    scaled = wanted.reference_lr is not None and (wanted.reference_lr, wanted.reference_batch_size) == (
        base.reference_lr, base.reference_batch_size)  # its lr follows from --set batch_size
    for key in base.differences(wanted):
        if key == "name" or key in changes or (key == "lr" and scaled):
            continue
        value = getattr(wanted, key)
        args += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    for key in changes:
        value = getattr(wanted, key)
        args += ["--lr", f"{value:g}"] if key == "lr" else ["--set", f"{key}={value}"]
    args += ["--seed", str(run["seed"])]
    for key, flag in (("subset", "--subset"), ("test_subset", "--test-subset"), ("val_split", "--val-split")):
        if run.get(key):
            args += [flag, str(run[key])]
    args += ["--data-dir", _data_root(cfg.data_dir)]
    if cfg.download is False:
        args.append("--no-download")
    if cfg.device not in (None, "auto"):
        args += ["--device", str(cfg.device)]
    if cfg.compile:
        args.append("--compile")
    if out is not None:
        args += ["--out", str(out)]
    return " ".join(shlex.quote(a) for a in args)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"a JSON object was expected, not {type(data).__name__}")
        return data
    except FileNotFoundError:
        raise CheckpointError(
            f"{str(path.parent)!r} is not a run directory of `aperture train` ({path.name} is missing)"
        ) from None
    except (OSError, ValueError) as exc:  # a directory in its place, truncated or hand-edited JSON
        raise CheckpointError(f"{str(path)!r} is unreadable ({exc}); this run cannot be resumed") from None


def _write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _read_run(path: Path) -> dict[str, Any]:
    """``run.json``, checked field by field: a damaged file is one line, not a KeyError mid-resume."""
    from aperture_zoo.errors import ApertureError as _Err

    run = _read_json(path)

    def whole(v: Any, optional: bool = False) -> bool:
        return (v is None and optional) or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)

    problem = None
    try:
        spec = ModelSpec.from_dict(run.get("spec"))  # type: ignore[arg-type]
        if run.get("arch") != spec.arch_dict():
            problem = "'arch' does not match 'spec'"
    except (_Err, TypeError, ValueError) as exc:
        problem = f"'spec': {exc}"
    if problem is None:
        for key, optional in (("seed", False), ("subset", True), ("test_subset", True)):
            if not whole(run.get(key), optional):
                problem = f"{key!r} is {run.get(key)!r}"
        val = run.get("val_split")
        if not (isinstance(val, (int, float)) and not isinstance(val, bool) and val >= 0):
            problem = problem or f"'val_split' is {val!r}"
    if problem:
        raise CheckpointError(f"{str(path)!r} is damaged ({problem}); this run cannot be resumed: start a new one")
    return run


def load_run_recipe(run_dir: str | os.PathLike[str]) -> Recipe:
    """The recipe a run directory was trained with (its ``recipe.json``); a clear error if it is not a run."""
    path = Path(run_dir) / RECIPE_NAME
    try:
        return Recipe.from_dict(_read_json(path))
    except RecipeError as exc:
        raise CheckpointError(f"{str(path)!r} is damaged ({exc}); this run cannot be resumed: start a new one") from None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl``; a torn last line (``kill -9`` mid-append) is skipped, not fatal.

    Rows are appended before the epoch's checkpoint is written, so a torn row always belongs to an
    epoch the checkpoint does not include and would be dropped on resume anyway.
    """
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "epoch" in row:
            rows.append(row)
    return rows


def _resolve_run(cfg: TrainConfig) -> tuple[ModelSpec, Recipe, dict[str, Any], Path | None, dict[str, Any] | None]:
    """Spec, recipe, data options, run dir (resuming only) and checkpoint, checked for consistency."""
    if cfg.resume is None:
        if cfg.model is None:
            raise TrainingError("no model given; pass a name such as resnet22 (see `aperture list`)")
        spec = cfg.model if isinstance(cfg.model, ModelSpec) else get_spec(cfg.model)
        recipe = (cfg.recipe or FAST).validate()
        run = {
            "arch": spec.arch_dict(), "spec": json.loads(spec.to_json()),
            "seed": 0 if cfg.seed is None else cfg.seed, "subset": cfg.subset,
            "test_subset": cfg.test_subset, "val_split": cfg.val_split or 0,
        }
        return spec, recipe, run, None, None  # the folder is claimed later, on rank 0

    run_dir = Path(cfg.resume)
    if _in_use(run_dir):  # still starting (or training): it has no checkpoint *yet*
        raise TrainingError(
            f"{str(run_dir)!r} is in use by another training process (still starting, or training); "
            "wait for it to finish or stop it, then resume"
        )
    run = _read_run(run_dir / RUN_NAME)
    saved_recipe = load_run_recipe(run_dir)
    if not (run_dir / CHECKPOINT_NAME).exists():
        raise CheckpointError(
            f"the run in {str(run_dir)!r} stopped before its first checkpoint (the end of epoch 1, or "
            "the first interruption it saw), so there is nothing to resume; start it again: "
            f"`{retry_command(ModelSpec.from_dict(run['spec']), saved_recipe, run, cfg, out=run_dir)}`"
        )
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
    spec = ModelSpec.from_dict(run["spec"])
    if cfg.model is not None:
        asked = cfg.model if isinstance(cfg.model, ModelSpec) else get_spec(cfg.model)
        if asked.arch_dict() != run["arch"]:
            raise CheckpointError(
                f"cannot resume {str(run_dir)!r}: it trains {run['arch']['name']} "
                f"{run['arch']['blocks']}/{run['arch']['channels']}, not {asked.name} "
                f"{list(asked.blocks)}/{list(asked.channels)}. Resume without a model name, or start "
                "a new run"
            )
    if cfg.recipe is not None and cfg.recipe != saved_recipe:
        detail = ", ".join(f"{k}: run {getattr(saved_recipe, k)!r} vs asked {getattr(cfg.recipe, k)!r}"
                           for k in saved_recipe.differences(cfg.recipe))
        raise RecipeError(
            f"cannot resume {str(run_dir)!r} with a different recipe ({detail}); resume with no "
            "recipe options to continue it as it was, or start a new run"
        )
    for key, asked_value in (("seed", cfg.seed), ("subset", cfg.subset), ("test_subset", cfg.test_subset),
                             ("val_split", cfg.val_split)):
        if asked_value is not None and asked_value != run[key]:
            raise CheckpointError(
                f"cannot resume {str(run_dir)!r} with {key}={asked_value}: the run used "
                f"{key}={run[key]}. Drop the option to continue it, or start a new run"
            )
    return spec, saved_recipe, run, run_dir, ckpt


# --------------------------------------------------------------------------- the loop


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
class _Run:
    """What the loop's functions share and never change: the settings, this rank, the run's folder."""

    cfg: TrainConfig
    info: D.DistInfo
    device: torch.device
    spec: ModelSpec
    recipe: Recipe
    run: dict[str, Any]  # seed and data options, as in run.json
    run_dir: Path

    def diverged(self, state: RunState, what: str, epoch: int, step: int) -> TrainingError:
        """The error for a run that diverged: its last good checkpoint, and a command to retry it."""
        kept = (f"The last good checkpoint ({state.saved_at}) is kept in {str(self.run_dir)!r}. "
                if state.saved_at else "No checkpoint had been written yet. ")
        retry = retry_command(self.spec, self.recipe, self.run, self.cfg, lr=self.recipe.lr / 2)
        return TrainingError(
            f"the training {what} in epoch {epoch + 1}, by step {step}; stopped. {kept}"
            f"Lower --lr: start again with half of it, `{retry}` (or add warm-up, --set warmup_fraction=0.1, "
            "or --set precision=fp32 to that command)"
        )


@dataclass
class _Data:
    """The splits on the device and the normalisation the model was built with."""

    train: DeviceSplit
    test: DeviceSplit
    val: DeviceSplit | None
    mean: Tensor
    std: Tensor


def fit(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) one run and write its directory; see the module docstring."""
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
    spec, recipe, run, resume_dir, ckpt = _resolve_run(cfg)
    done = _finished(resume_dir, ckpt, recipe)
    if done is not None:
        return done
    if resume_dir is None and cfg.out_dir is not None:  # a refused --out fails before the data is loaded
        _decided_on_rank0(info, lambda: check_new_run_dir(cfg.out_dir))  # type: ignore[arg-type]
    if recipe.batch_size % info.world_size:
        raise TrainingError(f"batch size {recipe.batch_size} does not split over {info.world_size} ranks; "
                            "use a multiple")
    data = _load_data(cfg, run, spec, recipe.batch_size, info, device, data_from_run)
    state = _initial_state(spec, recipe, int(run["seed"]), info, device, ckpt)
    step_fn = TrainStep(_network(state.model, info, device, bool(cfg.compile)), state.optimizer,
                        autocast_dtype(recipe.precision, device))
    # rank 0 decides the folder (and holds its lock); every rank writes its name in messages
    run_dir = Path(_decided_on_rank0(info, lambda: _claim(cfg, resume_dir, spec.name, stack)))
    r = _Run(cfg, info, device, spec, recipe, run, run_dir)
    rows = _open_run_dir(r, resumed=ckpt is not None, epochs_done=state.epoch)
    stream = BatchStream(data.train, recipe.batch_size, AugmentConfig.from_recipe(recipe), data.mean, data.std,
                         spec.num_classes, int(run["seed"]), rank=info.rank, world_size=info.world_size,
                         channels_last=recipe.channels_last)
    last: dict[str, Any] | None = None  # the newest epoch row of this call (all ranks)
    step_fn.model.train()
    bar = TrainProgress(cfg.progress and info.is_main, recipe.epochs, stream.steps, with_val=data.val is not None,
                        budget_s=cfg.time_budget_s if info.is_main else None)
    with _StopFlag() as stop, bar:
        while state.epoch < recipe.epochs:
            row, halted = train_epoch(r, state, step_fn, stream, stop, bar)
            if row is not None:  # the epoch ran to its end
                last = finish_epoch(r, state, data, row, bar)
                if info.is_main:
                    rows.append(last)
            checkpoint(r, state, stream.steps)
            _stop_if_asked(r, state, stream.steps, row, budget, halted, stop.signum)
    if last is None:  # resumed a run whose last epoch was already complete
        last = evaluate_epoch(r, state.eval_model, data, with_val=False)
    result = TrainResult(
        run_dir=run_dir, test_top1=last["test_top1"], test_loss=last["test_loss"], epochs=recipe.epochs,
        wall_time_s=state.elapsed["wall"],
        train_images_per_s=state.elapsed["images"] / max(state.elapsed["train"], 1e-9), metrics=rows,
    )
    if info.is_main:
        _write_outputs(result, state.eval_model, recipe, run, device, info)
    D.barrier(info)
    return result


def _finished(run_dir: Path | None, ckpt: dict[str, Any] | None, recipe: Recipe) -> TrainResult | None:
    """The recorded result of a run that already trained every epoch and wrote its weights, else None."""
    from aperture_zoo.weights import decode_metadata, read_metadata

    weights = run_dir / WEIGHTS_NAME if run_dir is not None else None
    if ckpt is None or weights is None or not weights.is_file() or ckpt["info"]["epoch"] < recipe.epochs:
        return None
    meta = decode_metadata(read_metadata(weights))
    return TrainResult(run_dir=run_dir, test_top1=float(meta["test_top1"]), test_loss=float(meta["test_loss"]),
                       epochs=int(meta["epochs"]), wall_time_s=float(meta["wall_time_s"]),
                       train_images_per_s=float(meta["train_images_per_s"]),
                       metrics=read_metrics(run_dir / METRICS_NAME), already_complete=True)


def _load_data(cfg: TrainConfig, run: dict[str, Any], spec: ModelSpec, batch_size: int, info: D.DistInfo,
               device: torch.device, data_from_run: bool) -> _Data:
    """The run's splits on ``device`` (fetched by rank 0 if need be), checked to hold a batch."""
    try:
        _fetch_data_once(cfg, info)
    except DataError as exc:
        if not data_from_run:
            raise
        raise DataError(f"{exc} (resuming {str(cfg.resume)!r} uses the data folder it was started with; pass "
                        "--data-dir if the data has moved)") from None
    splits = load_splits(cfg.data_dir, run["subset"], run["val_split"], run["test_subset"], int(run["seed"]))
    train = DeviceSplit.from_split(splits.train, device)
    if len(train) < batch_size:
        raise TrainingError(
            f"batch size {batch_size} is larger than the {len(train)} training images; lower it with --batch-size"
        )
    val = DeviceSplit.from_split(splits.val, device) if splits.val is not None else None
    return _Data(train, DeviceSplit.from_split(splits.test, device), val,
                 torch.tensor(spec.mean, device=device), torch.tensor(spec.std, device=device))


def _initial_state(spec: ModelSpec, recipe: Recipe, seed: int, info: D.DistInfo, device: torch.device,
                   ckpt: dict[str, Any] | None) -> RunState:
    """A new run's network (seeded), optimizer and EMA on ``device``, or those of ``ckpt``."""
    if device.type == "cuda":  # fixed shapes (the last partial batch is dropped): autotuning pays
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(seed)
    model: nn.Module = create_model(spec)
    if info.enabled and device.type == "cuda" and recipe.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    state = RunState(model, build_optimizer(model, recipe, device),
                     EMA(model, recipe.ema_decay) if recipe.ema_decay > 0 else None,
                     sums=torch.zeros(3, device=device, dtype=torch.float64))
    if ckpt is not None:
        state.load(ckpt, info.is_main)
    return state


def _network(model: nn.Module, info: D.DistInfo, device: torch.device, compile: bool) -> nn.Module:
    """What runs the forward pass: ``model`` under DDP on several ranks, compiled if asked."""
    net = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(net) if compile else net  # type: ignore[return-value]


def _claim(cfg: TrainConfig, resume_dir: Path | None, name: str, stack: contextlib.ExitStack) -> str:
    """The run's folder (a new one, or the resumed one), locked for as long as ``stack`` is open."""
    path = resume_dir if resume_dir is not None else claim_run_dir(cfg.out_dir, name)
    stack.enter_context(_run_lock(path))
    return str(path)


def _open_run_dir(r: _Run, resumed: bool, epochs_done: int) -> list[dict[str, Any]]:
    """Write a new run's settings, or trim a resumed run's metrics to its checkpoint; its rows so far.

    Only rank 0 writes. A resumed run drops the rows of epochs its checkpoint does not include
    (written, then killed) and the temporary files of a write cut short by ``kill -9``.
    """
    if not r.info.is_main:
        return []
    metrics_path = r.run_dir / METRICS_FILENAME
    rows: list[dict[str, Any]] = []
    if not resumed:
        _write_json_atomic(r.run_dir / RECIPE_NAME, r.recipe.to_dict())
        _write_json_atomic(r.run_dir / RUN_NAME, {
            **r.run, "world_size": r.info.world_size, "torch_version": torch.__version__,
            # how it ran, so that `--resume DIR` alone continues it the same way
            "data_dir": _data_root(r.cfg.data_dir), "download": r.cfg.download, "device": r.cfg.device,
            "compile": r.cfg.compile,
        })
    else:
        rows = [row for row in read_metrics(metrics_path) if row["epoch"] <= epochs_done]
    atomic_write_text(metrics_path, "".join(json.dumps(row) + "\n" for row in rows))
    for name in _WRITTEN_ATOMICALLY:
        for stale in r.run_dir.glob(f"{name}.tmp*"):
            stale.unlink(missing_ok=True)
    return rows


def train_epoch(r: _Run, state: RunState, step_fn: TrainStep, stream: BatchStream, stop: _StopFlag,
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
        for group in state.optimizer.param_groups:
            group["lr"] = lr_at(r.recipe, state.epoch * steps + step, steps)
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


def _read_back(r: _Run, state: RunState, stop: _StopFlag, secs: float, steps_done: int, bar: TrainProgress,
               clock: SyncClock) -> tuple[list[float], bool]:
    """The loop's one host sync: the epoch's totals over all ranks, checked finite, and the stop vote.

    One all-reduce carries the sums, each rank's stop flag and rank 0's elapsed seconds (the other
    ranks add 0), so every rank gets the same step time and sets the same next sync.
    """
    extra = torch.tensor([float(stop.signum > 0), secs if r.info.is_main else 0.0], device=r.device,
                         dtype=torch.float64)
    shown = D.all_reduce_sum(torch.cat([state.sums, extra]), r.info).tolist()
    if not all(math.isfinite(v) for v in shown[:2]):
        raise r.diverged(state, f"loss became {'nan' if math.isnan(shown[0]) else 'inf'}", state.epoch, state.step)
    clock.synced(state.step, shown[4] / max(steps_done, 1))
    bar.update(state.step, shown[0] / max(shown[2], 1), 100 * shown[1] / max(shown[2], 1),
               steps_done * r.recipe.batch_size / max(shown[4], 1e-9))
    return shown[:3], shown[3] > 0


def evaluate_epoch(r: _Run, model: nn.Module, data: _Data, with_val: bool = True) -> dict[str, Any]:
    """Test (and validation) loss and top-1 of ``model``: each rank scores a shard, sums are all-reduced."""
    def score(split: DeviceSplit) -> EvalResult:
        part = slice(r.info.rank, None, r.info.world_size)
        sums = evaluate_sums(model, split.images[part], split.labels[part], data.mean, data.std,
                             r.spec.num_classes, r.recipe.eval_batch_size, autocast_dtype(r.recipe.precision, r.device),
                             r.recipe.channels_last)
        return result_from_sums(D.all_reduce_sum(sums, r.info), split.classes)

    test = score(data.test)
    out: dict[str, Any] = {"test_loss": test.loss, "test_top1": test.top1, "test_images": test.num_images}
    if with_val and data.val is not None:
        val = score(data.val)
        out.update(val_loss=val.loss, val_top1=val.top1)
    return out


def finish_epoch(r: _Run, state: RunState, data: _Data, row: dict[str, Any], bar: TrainProgress) -> dict[str, Any]:
    """Evaluate when due, count the epoch's time, log its row, and move ``state`` to the next epoch."""
    started = time.perf_counter()
    if row["epoch"] % r.recipe.eval_every == 0 or row["epoch"] == r.recipe.epochs:
        row.update(evaluate_epoch(r, state.eval_model, data))
    row["epoch_seconds"] = row["train_seconds"] + time.perf_counter() - started
    state.add_time(wall=row["epoch_seconds"])
    state.next_epoch()
    if r.info.is_main:
        with (r.run_dir / METRICS_FILENAME).open("a") as f:
            f.write(json.dumps(row) + "\n")
        bar.epoch_done(row)
    return row


def checkpoint(r: _Run, state: RunState, steps: int) -> None:
    """Save ``state`` on rank 0, unless its weights are not finite (a clear error instead).

    A finite loss does not prove finite weights: the last update of an epoch can overflow them.
    Every rank checks (DDP keeps them identical), so all ranks stop together.
    """
    if not state.weights_finite():
        at_boundary = state.step == 0
        raise r.diverged(state, "weights became nan/inf (the loss was still finite)",
                         state.epoch - at_boundary, steps if at_boundary else state.step)
    if r.info.is_main:
        state.save(r.run_dir / CHECKPOINT_NAME, arch=r.spec.arch_dict(), seed=int(r.run["seed"]))
    else:
        state.saved_at = state.where


def _stop_if_asked(r: _Run, state: RunState, steps: int, row: dict[str, Any] | None, budget: _Budget,
                   halted: bool, signum: int) -> None:
    """The one way a run stops before its last epoch: after its checkpoint, saying how to continue.

    ``halted``: the ranks agreed on a stop at a sync point (part-way through an epoch, or at its last
    step); a single process also stops for a signal that came during evaluation. The time budget is
    judged after each whole epoch (``row``), by rank 0 for every rank.
    """
    over = row is not None and D.broadcast_object(not budget.fits_another(row["epoch_seconds"]), r.info)
    if state.epoch >= r.recipe.epochs:
        return
    resume = f"checkpoint saved in {str(r.run_dir)!r}. Continue with: {resume_command(r.run_dir)}"
    if over:
        raise TimeBudgetReached(
            f"time budget of {r.cfg.time_budget_s:g}s reached after epoch {state.epoch}/{r.recipe.epochs} "
            f"(another epoch takes about {budget.slowest:.0f}s); {resume}", r.run_dir, state.epoch)
    if halted or (signum and not r.info.enabled):
        signum = signum or signal.SIGTERM
        where = (f"in epoch {state.epoch + 1} at step {state.step}/{steps}" if state.step
                 else f"after epoch {state.epoch}")
        raise TrainingInterrupted(f"interrupted by {_signame(signum)} {where}; {resume}", r.run_dir, signum)


def _fetch_data_once(cfg: TrainConfig, info: D.DistInfo) -> None:
    """Make sure CIFAR-10 is there, downloading it on rank 0 only.

    Ranks downloading into one folder at once would corrupt it; and if rank 0 fails (offline),
    every rank must raise the same clear error rather than wait for it at a barrier.
    """
    problem = None
    if info.is_main:
        try:
            locate(cfg.data_dir, cfg.download)
        except DataError as exc:
            problem = str(exc)
    problem = D.broadcast_object(problem, info)
    if problem:
        raise DataError(problem)


def _signame(signum: float) -> str:
    try:
        return signal.Signals(int(signum)).name
    except ValueError:
        return f"signal {int(signum)}"


def _write_outputs(result: TrainResult, model: nn.Module, recipe: Recipe, run: dict[str, Any],
                   device: torch.device, info: D.DistInfo) -> None:
    """model.safetensors (with provenance metadata) and curves.png; the final epoch's numbers only."""
    from aperture_zoo.weights import save_weights

    from .plots import plot_curves

    plain = model
    if not isinstance(plain, ResNet):  # SyncBatchNorm-converted modules keep the ResNet class
        raise TrainingError("internal: expected a ResNet to save")
    metadata = {
        "test_top1": round(result.test_top1, 4), "test_loss": round(result.test_loss, 6),
        "epochs": result.epochs, "recipe": recipe.to_dict(), "seed": run["seed"],
        "train_device": device_name(device), "world_size": info.world_size,
        "wall_time_s": round(result.wall_time_s, 3), "train_images_per_s": round(result.train_images_per_s, 1),
        "subset": run["subset"], "val_split": run["val_split"], "test_subset": run["test_subset"],
        "ema": recipe.ema_decay > 0,
    }
    save_weights(plain, result.run_dir / WEIGHTS_FILENAME, metadata)
    rows = read_metrics(result.run_dir / METRICS_FILENAME)
    plot_curves(rows, result.run_dir / CURVES_FILENAME, title=f"{plain.spec.name} ({recipe.name})")
