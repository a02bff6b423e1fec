"""The training loop: device-resident data, bf16 autocast, DDP, atomic per-epoch checkpoints.

``fit(TrainConfig(...))`` is the library entry point; ``aperture train`` and ``torchrun -m
aperture_zoo.train`` are thin wrappers over it. The hot loop never reads a value back to the host
per step: loss and accuracy are summed on the device and read every ``log_every`` steps (one sync),
where the progress bar, the NaN/inf check and, under DDP, the agreed stop decision happen together.
"""

from __future__ import annotations

import contextlib
import copy
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
from .augment import AugmentConfig, Batch, augment_batch, step_seed
from .checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint
from .device import autocast_dtype, device_name
from .evaluate import evaluate_sums, result_from_sums
from .loader import DeviceSplit, epoch_order, load_splits, rank_slice
from .recipes import FAST, RECIPES, Recipe, RecipeError

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
    log_every: int = 25
    time_budget_s: float | None = None  # this call's training time; stops at the epoch boundary before it


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


class EMA:
    """Exponential moving average of all float state (weights and BN statistics), with warm-up."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        self.updates = 0
        mine, theirs = self.model.state_dict(), model.state_dict()  # views of the live tensors
        self._floats = [(mine[k], theirs[k]) for k in mine if mine[k].is_floating_point()]
        self._others = [(mine[k], theirs[k]) for k in mine if not mine[k].is_floating_point()]

    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            torch._foreach_lerp_([a for a, _ in self._floats], [b for _, b in self._floats], 1.0 - d)
            for a, b in self._others:
                a.copy_(b)


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
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{str(path.parent)!r} is not a run directory of `aperture train` ({path.name} is missing)"
        ) from None
    except (OSError, ValueError) as exc:  # a directory in its place, truncated or hand-edited JSON
        raise CheckpointError(f"{str(path)!r} is unreadable ({exc}); this run cannot be resumed") from None


def _write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_run_recipe(run_dir: str | os.PathLike[str]) -> Recipe:
    """The recipe a run directory was trained with (its ``recipe.json``); a clear error if it is not a run."""
    return Recipe.from_dict(_read_json(Path(run_dir) / RECIPE_NAME))


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


def _all_finite(model: nn.Module) -> bool:
    """Whether every float tensor of the model (weights and BN statistics) is finite: one host sync."""
    flags = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(flags).all().item())


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
    run = _read_json(run_dir / RUN_NAME)
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


def _progress(enabled: bool):  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  {task.fields[ips]} img/s"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not enabled, transient=False,
    )


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
    budget = _Budget(cfg.time_budget_s, time.perf_counter())
    spec, recipe, run, resume_dir, ckpt = _resolve_run(cfg)
    if device.type == "cuda":  # fixed shapes (the last partial batch is dropped): autotuning pays
        torch.backends.cudnn.benchmark = True
    if resume_dir is None and cfg.out_dir is not None:  # a refused --out fails before the data is loaded
        _decided_on_rank0(info, lambda: check_new_run_dir(cfg.out_dir))  # type: ignore[arg-type]
    seed = int(run["seed"])
    B = recipe.batch_size
    if B % info.world_size:
        raise TrainingError(f"batch size {B} does not split over {info.world_size} ranks; use a multiple")

    try:
        _fetch_data_once(cfg, info)
    except DataError as exc:
        if not data_from_run:
            raise
        raise DataError(f"{exc} (resuming {str(cfg.resume)!r} uses the data folder it was started with; pass "
                        "--data-dir if the data has moved)") from None
    splits = load_splits(cfg.data_dir, run["subset"], run["val_split"], run["test_subset"], seed)
    train = DeviceSplit.from_split(splits.train, device)
    test = DeviceSplit.from_split(splits.test, device)
    val = DeviceSplit.from_split(splits.val, device) if splits.val is not None else None
    steps = len(train) // B
    if steps == 0:
        raise TrainingError(
            f"batch size {B} is larger than the {len(train)} training images; lower it with --batch-size"
        )

    torch.manual_seed(seed)
    raw = create_model(spec)
    autocast = autocast_dtype(recipe.precision, device)
    start_epoch, start_step = 0, 0
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss*n, correct, n of the epoch so far
    elapsed = {"wall": 0.0, "train": 0.0, "images": 0.0}
    if ckpt is not None:
        raw.load_state_dict(ckpt["model"])
        start_epoch, start_step = ckpt["info"]["epoch"], ckpt["info"]["step"]
        if info.is_main:  # the saved sums are already totals over all ranks
            sums = torch.tensor(ckpt["info"]["sums"], device=device, dtype=torch.float64)
        elapsed = ckpt["info"]["elapsed"]
    if info.enabled and device.type == "cuda" and recipe.sync_bn:
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    raw = raw.to(device)
    if recipe.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(raw, recipe, device)
    ema = EMA(raw, recipe.ema_decay) if recipe.ema_decay > 0 else None
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None and ckpt["ema"] is not None:
            ema.model.load_state_dict(ckpt["ema"])
            ema.updates = ckpt["info"].get("ema_updates", 0)
    net: nn.Module = raw
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    step_fn = TrainStep(net, optimizer, autocast)
    mean = torch.tensor(spec.mean, device=device)
    std = torch.tensor(spec.std, device=device)
    aug = AugmentConfig.from_recipe(recipe)
    shard = rank_slice(B, info.rank, info.world_size) if info.enabled else None
    gen = torch.Generator(device=device)
    local_n = B // info.world_size
    local_n_t = torch.tensor(float(local_n), device=device, dtype=torch.float64)  # made once: no copy per step

    def claim() -> str:
        path = resume_dir if resume_dir is not None else claim_run_dir(cfg.out_dir, spec.name)
        stack.enter_context(_run_lock(path))
        return str(path)

    # rank 0 decides the folder (and holds its lock); every rank writes its name in messages
    run_dir = Path(_decided_on_rank0(info, claim))
    metrics_path = run_dir / METRICS_FILENAME
    rows: list[dict[str, Any]] = []
    if info.is_main:
        if ckpt is None:
            _write_json_atomic(run_dir / RECIPE_NAME, recipe.to_dict())
            _write_json_atomic(run_dir / RUN_NAME, {
                **run, "world_size": info.world_size, "torch_version": torch.__version__,
                # how it ran, so that `--resume DIR` alone continues it the same way
                "data_dir": _data_root(cfg.data_dir), "download": cfg.download, "device": cfg.device,
                "compile": cfg.compile,
            })
        else:  # drop rows of epochs the checkpoint does not include (written, then killed)
            rows = [r for r in read_metrics(metrics_path) if r["epoch"] <= start_epoch]
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        for name in _WRITTEN_ATOMICALLY:  # a write cut short by kill -9
            for stale in run_dir.glob(f"{name}.tmp*"):
                stale.unlink(missing_ok=True)
    saved = {"at": f"epoch {start_epoch}" + (f", step {start_step}" if start_step else "")} if ckpt else {}

    def diverged(what: str, epoch: int, step: int) -> TrainingError:
        kept = (f"The last good checkpoint ({saved['at']}) is kept in {str(run_dir)!r}. " if saved
                else "No checkpoint had been written yet. ")
        retry = retry_command(spec, recipe, run, cfg, lr=recipe.lr / 2)
        return TrainingError(
            f"the training {what} in epoch {epoch + 1}, by step {step}; stopped. {kept}"
            f"Lower --lr: start again with half of it, `{retry}` (or add warm-up, --set warmup_fraction=0.1, "
            "or --set precision=fp32 to that command)"
        )

    def checkpoint(epoch: int, step: int, epoch_sums: list[float]) -> None:
        # A finite loss does not prove finite weights: the last update of an epoch can overflow
        # them. Every rank checks (DDP keeps them identical) so all ranks stop together.
        if not _all_finite(raw):
            raise diverged("weights became nan/inf (the loss was still finite)", epoch - (step == 0),
                           step or steps)
        if info.is_main:
            state = {"epoch": epoch, "step": step, "sums": epoch_sums, "elapsed": elapsed,
                     "ema_updates": ema.updates if ema else 0, "arch": spec.arch_dict(), "seed": seed}
            save_checkpoint(run_dir / CHECKPOINT_NAME, raw.state_dict(), optimizer.state_dict(), state,
                            ema.model.state_dict() if ema else None)
        saved["at"] = f"epoch {epoch}" + (f", step {step}" if step else "")

    def eval_model() -> nn.Module:
        return ema.model if ema is not None else raw

    def evaluate_on(split: DeviceSplit) -> Tensor:
        part = slice(info.rank, None, info.world_size)
        s = evaluate_sums(eval_model(), split.images[part], split.labels[part], mean, std, spec.num_classes,
                          recipe.eval_batch_size, autocast, recipe.channels_last)
        return D.all_reduce_sum(s, info)

    last_test: dict[str, float] = {}
    halt = False
    net.train()
    progress = _progress(cfg.progress and info.is_main)
    with _StopFlag() as stop, progress:
        task = progress.add_task("train", total=steps, epoch="", loss="-", acc="-", ips="-")
        for epoch in range(start_epoch, recipe.epochs):
            gen.manual_seed(step_seed(seed, epoch, -1))
            order = epoch_order(len(train), gen, device)
            first = start_step if epoch == start_epoch else 0
            if epoch != start_epoch:
                sums.zero_()
            progress.update(task, completed=first, epoch=f"{epoch + 1}/{recipe.epochs}")
            t_epoch = time.perf_counter()
            for step in range(first, steps):
                lr = lr_at(recipe, epoch * steps + step, steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                idx = order[step * B:(step + 1) * B]
                gen.manual_seed(step_seed(seed, epoch, step))
                batch = augment_batch(train.images[idx], train.labels[idx], aug, mean, std, spec.num_classes,
                                      gen, shard, recipe.channels_last)
                loss, correct = step_fn(batch)
                sums += torch.stack([loss.double() * local_n, correct.double(), local_n_t])
                if ema is not None:
                    ema.update()
                done = step + 1
                sync_now = done % cfg.log_every == 0 or done == steps
                if not info.enabled and stop.signum:
                    sync_now = True
                if sync_now:
                    flag = torch.tensor([float(stop.signum > 0)], device=device, dtype=torch.float64)
                    shown = D.all_reduce_sum(torch.cat([sums, flag]), info).tolist()
                    if not all(math.isfinite(v) for v in shown[:2]):
                        raise diverged(f"loss became {'nan' if math.isnan(shown[0]) else 'inf'}", epoch, done)
                    secs = time.perf_counter() - t_epoch
                    ips = (done - first) * B / max(secs, 1e-9)
                    progress.update(task, completed=done, loss=f"{shown[0] / max(shown[2], 1):.4f}",
                                    acc=f"{100 * shown[1] / max(shown[2], 1):.2f}%", ips=f"{ips:,.0f}")
                    halt = shown[3] > 0
                    if halt and done < steps:
                        elapsed["wall"] += secs  # the partial epoch counts towards the run's time
                        elapsed["train"] += secs
                        elapsed["images"] += (done - first) * B
                        checkpoint(epoch, done, shown[:3])
                        raise TrainingInterrupted(
                            f"interrupted by {_signame(stop.signum)} in epoch {epoch + 1} at step {done}/{steps}; "
                            f"checkpoint saved in {str(run_dir)!r}. Continue with: {resume_command(run_dir)}", run_dir, stop.signum or signal.SIGTERM)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_secs = time.perf_counter() - t_epoch
            total = D.all_reduce_sum(sums.clone(), info).tolist()
            row: dict[str, Any] = {
                "epoch": epoch + 1, "lr": lr_at(recipe, (epoch + 1) * steps - 1, steps),
                "train_loss": total[0] / max(total[2], 1), "train_top1": 100 * total[1] / max(total[2], 1),
                "train_seconds": train_secs, "images_per_s": (steps - first) * B / max(train_secs, 1e-9),
            }
            if (epoch + 1) % recipe.eval_every == 0 or epoch + 1 == recipe.epochs:
                res = result_from_sums(evaluate_on(test), test.classes)
                row.update(test_loss=res.loss, test_top1=res.top1, test_images=res.num_images)
                last_test = {"loss": res.loss, "top1": res.top1}
                if val is not None:
                    vres = result_from_sums(evaluate_on(val), val.classes)
                    row.update(val_loss=vres.loss, val_top1=vres.top1)
            row["epoch_seconds"] = time.perf_counter() - t_epoch
            elapsed["wall"] += row["epoch_seconds"]
            elapsed["train"] += train_secs
            elapsed["images"] += (steps - first) * B
            sums.zero_()
            if info.is_main:
                rows.append(row)
                with metrics_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                progress.console.print(_epoch_line(row, recipe.epochs), highlight=False)
            checkpoint(epoch + 1, 0, [0.0, 0.0, 0.0])
            # rank 0 decides for all ranks, so they stop at the same epoch
            over = D.broadcast_object(not budget.fits_another(row["epoch_seconds"]), info)
            if epoch + 1 < recipe.epochs and over:
                raise TimeBudgetReached(
                    f"time budget of {cfg.time_budget_s:g}s reached after epoch {epoch + 1}/{recipe.epochs} "
                    f"(another epoch takes about {budget.slowest:.0f}s); checkpoint saved in {str(run_dir)!r}. "
                    f"Continue with: {resume_command(run_dir)}", run_dir, epoch + 1)
            if (halt or (stop.signum and not info.enabled)) and epoch + 1 < recipe.epochs:
                signum = stop.signum or signal.SIGTERM
                raise TrainingInterrupted(
                    f"interrupted by {_signame(signum)} after epoch {epoch + 1}; checkpoint saved in "
                    f"{str(run_dir)!r}. Continue with: {resume_command(run_dir)}", run_dir, signum)

    if not last_test:  # resumed a run whose last epoch was already complete
        res = result_from_sums(evaluate_on(test), test.classes)
        last_test = {"loss": res.loss, "top1": res.top1}
    result = TrainResult(
        run_dir=run_dir, test_top1=last_test["top1"], test_loss=last_test["loss"], epochs=recipe.epochs,
        wall_time_s=elapsed["wall"], train_images_per_s=elapsed["images"] / max(elapsed["train"], 1e-9),
        metrics=rows,
    )
    if info.is_main:
        _write_outputs(result, eval_model(), recipe, run, device, info)
    D.barrier(info)
    return result


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


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    text = (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_top1']:.2f}%"
            f"  lr {row['lr']:.4g}  {row['images_per_s']:,.0f} img/s  {row['epoch_seconds']:.1f}s")
    if "val_top1" in row:
        text += f"  val {row['val_top1']:.2f}%"
    if "test_top1" in row:
        text += f"  test loss {row['test_loss']:.4f} acc {row['test_top1']:.2f}%"
    return text


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
