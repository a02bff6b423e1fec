"""A run's settings: what ``fit`` is asked (``TrainConfig``), what it answers, and how it can fail.

``resolve_run`` turns a ``TrainConfig`` into the run to train: a new run's spec, recipe and data
options, or, on ``resume``, the ones its folder recorded, checked against anything asked anew. The
errors carry data (the run folder, its recipe and recorded options), not command lines: the CLI
words the hint that continues or retries a run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aperture_zoo.data import default_data_dir
from aperture_zoo.errors import ApertureError
from aperture_zoo.files import user_path
from aperture_zoo.registry import ModelSpec, get_spec

from .checkpoint import CheckpointError, OtherRun, load_checkpoint
from .recipes import FAST, FINETUNE, Recipe, RecipeError
from .rundir import RunDir

SYNC_INTERVAL_S = 0.25  # at most about 4 host syncs a second


class TrainingError(ApertureError, RuntimeError):
    """Training cannot go on (diverged, impossible settings); the message says what to change."""


class TrainingDiverged(TrainingError):
    """The loss or the weights became nan/inf; the run may be started again with other settings.

    ``record`` is what the run's ``run.json`` holds (model, seed, data options, how it runs), so a
    caller can say how to start it again; ``checkpointed``: a good checkpoint is kept, so it can
    also be resumed with a lower learning rate.
    """

    def __init__(self, message: str, run_dir: Path, recipe: Recipe, record: dict[str, Any],
                 checkpointed: bool = False) -> None:
        super().__init__(message)
        self.run_dir, self.recipe, self.record, self.checkpointed = run_dir, recipe, record, checkpointed


class NothingToResume(CheckpointError):
    """``resume`` of a run that stopped before its first checkpoint; starting it again loses nothing."""

    def __init__(self, message: str, run_dir: Path, recipe: Recipe, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.run_dir, self.recipe, self.record = run_dir, recipe, record


class TrainingInterrupted(ApertureError, RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was saved in ``run_dir``, from which the run resumes."""

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
    started: float | None = None  # seconds since the epoch that name a new runs/NAME-TIME folder (None: now)
    dataset: str | os.PathLike[str] | None = None  # cifar10 (default), cifar100 or a folder (datasets.py)
    test_split: float | None = None  # a folder without test/: the share held out (default 0.2)
    init: str | os.PathLike[str] | None = None  # start from these weights (a tag or a file): finetune.py
    freeze_backbone: bool = False  # with init: train the head only

    def __post_init__(self) -> None:
        if self.seed is not None and (isinstance(self.seed, bool) or not 0 <= int(self.seed) < 2**32):
            raise TrainingError(f"--seed must be in 0..{2**32 - 1} (numpy and torch take unsigned seeds), got {self.seed}")


@dataclass
class TrainResult:
    run_dir: Path
    test_top1: float
    test_loss: float
    epochs: int
    wall_time_s: float
    train_images_per_s: float
    metrics: list[dict[str, Any]] = field(default_factory=list)
    already_complete: bool = False  # --resume of a finished run: nothing was trained or written ...
    drew_curves: bool = False  # ... but its missing curves.png (a kill -9 after the weights), drawn from metrics.jsonl
    test_top1_flip_tta: float | None = None  # the final epoch with flip TTA (recipe final_tta), never in test_top1


@dataclass
class Run:
    """The run ``resolve_run`` found: what to train, and from where (``resume_dir``, ``ckpt``) if resuming.

    ``record`` holds what ``run.json`` records: model, seed, data options and how it runs (data
    folder, download, device, compile), with values given on this call winning.
    """

    spec: ModelSpec
    recipe: Recipe
    record: dict[str, Any]
    resume_dir: Path | None = None
    ckpt: dict[str, Any] | None = None

    @property
    def seed(self) -> int:
        return int(self.record["seed"])


def data_root(data_dir: str | os.PathLike[str] | None) -> str:
    """The data folder as an absolute path, so a resume from another directory finds it too."""
    return str(user_path(data_dir if data_dir is not None else default_data_dir()).resolve())


def _resumed(path: str | os.PathLike[str]) -> RunDir:
    """The folder of a run to resume, refused while another process holds it (still starting, or training)."""
    folder = RunDir(Path(path))
    if folder.in_use():  # a run still starting has no checkpoint *yet*: not "stopped before its first one"
        raise TrainingError(
            f"{str(folder.path)!r} is in use by another training process (still starting, or training); "
            "wait for it to finish or stop it, then resume"
        )
    return folder


def with_run_options(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every option left at ``None`` filled in: on resume as the run was started, else the defaults.

    Runs from before these options were recorded fall back to the defaults.
    """
    saved = _resumed(cfg.resume).record() if cfg.resume is not None else {}
    _check_data_dir_used(cfg, saved)
    changes: dict[str, Any] = {}
    for key, default in (("download", True), ("device", "auto"), ("compile", False)):
        if getattr(cfg, key) is None:
            changes[key] = saved.get(key, default)
    if cfg.data_dir is None and saved.get("data_dir"):
        changes["data_dir"] = saved["data_dir"]
    return dataclasses.replace(cfg, **changes)


def _check_data_dir_used(cfg: TrainConfig, saved: dict[str, Any]) -> None:
    """A data folder given to a run that reads none is refused: ignoring it would let the user believe it was read."""
    from aperture_zoo.datasets import dataset_name, is_builtin

    dataset = dataset_name(cfg.dataset) if cfg.dataset is not None else saved.get("dataset")
    if cfg.data_dir is not None and not is_builtin(dataset):
        raise TrainingError(f"--data-dir (data_dir) is where CIFAR-10/100 are read from, but this run trains on the "
                            f"image folder {str(dataset)!r}, which holds its own images: drop --data-dir")


def _how_it_runs(cfg: TrainConfig) -> dict[str, Any]:
    return {"data_dir": data_root(cfg.data_dir), "download": cfg.download, "device": cfg.device,
            "compile": cfg.compile}


def resolve_run(cfg: TrainConfig) -> Run:
    """The run ``cfg`` asks for (``cfg`` filled in by ``with_run_options``), checked for consistency."""
    if cfg.resume is None:
        if cfg.model is None:
            raise TrainingError("no model given; pass a name such as resnet22 (see `aperture list`)")
        spec = cfg.model if isinstance(cfg.model, ModelSpec) else get_spec(cfg.model)
        _check_input_size(spec)
        record = {
            "arch": spec.arch_dict(), "spec": json.loads(spec.to_json()),
            "seed": 0 if cfg.seed is None else cfg.seed, "subset": cfg.subset,
            "test_subset": cfg.test_subset, "val_split": cfg.val_split or 0, "val_split_asked": cfg.val_split,
            **_how_it_runs(cfg),
            "run_id": uuid.uuid4().hex,  # every checkpoint carries it: a checkpoint of another run is refused
        }
        recipe = cfg.recipe or (FINETUNE if cfg.init is not None else FAST)
        return Run(spec, recipe.validate(), record)  # the folder is claimed later, on rank 0
    folder = _resumed(cfg.resume)
    saved = folder.record()
    run = Run(ModelSpec.from_dict(saved["spec"]), folder.recipe(), {**saved, **_how_it_runs(cfg)}, folder.path)
    if not folder.checkpoint.exists():
        raise NothingToResume(
            f"the run in {str(folder.path)!r} stopped before its first checkpoint (the end of epoch 1, or "
            "the first interruption it saw), so there is nothing to resume; start it again in the same folder",
            folder.path, run.recipe, run.record)
    recorded = run.recipe  # recipe.json as found: a lower --lr replaces run.recipe below
    was = _check_same_run(cfg, run)
    run.ckpt = load_checkpoint(folder.checkpoint)
    _check_own_checkpoint(run, recorded)
    _check_own_log(run, folder)
    if was is not None:  # resumed with a lower lr: run.json keeps every change and where it began
        info = run.ckpt["info"]
        change = {"epoch": int(info["epoch"]), "step": int(info["step"]), "lr": run.recipe.lr, "was": was}
        run.record = {**run.record, "lr_changes": [*run.record.get("lr_changes", []), change]}
    return run


# What every training source yields: CIFAR-10/100 as stored, an image folder decoded to 32x32 (folder.py).
TRAIN_IMAGE_SHAPE = (3, 32, 32)


def _check_input_size(spec: ModelSpec) -> None:
    """A model that cannot take the training images is refused before its run folder is written, not at batch one."""
    if tuple(spec.input_size) != TRAIN_IMAGE_SHAPE:
        raise TrainingError(
            f"--arch input_size={','.join(map(str, spec.input_size))}: training reads 3 x 32 x 32 images (CIFAR-10/100 "
            "as stored, image folders decoded to 32x32), which this model cannot take; drop input_size from --arch "
            "(the default is 3,32,32)")


def finished_run(run: Run, draw: bool = True) -> TrainResult | None:
    """The recorded result of a resumed run that already trained every epoch and wrote its weights, else None.

    ``draw``: a missing curves.png (the process was killed between the weights and the figure) is
    drawn from metrics.jsonl, as the end of training would have.
    """
    from aperture_zoo.weights import decode_metadata, read_metadata

    from .plots import draw_missing_curves

    if run.resume_dir is None:
        return None
    folder = RunDir(run.resume_dir)
    if run.ckpt is None or not folder.weights.is_file() or run.ckpt["info"]["epoch"] < run.recipe.epochs:
        return None
    meta, rows = decode_metadata(read_metadata(folder.weights)), folder.metrics()
    top1 = float(meta["test_top1"])
    drew = draw and _own_log(folder, meta.get("metrics_sha256")) and draw_missing_curves(
        rows, folder.curves, folder.weights, top1, title=f"{run.spec.name} ({run.recipe.name})")
    return TrainResult(run_dir=folder.path, test_top1=top1, test_loss=float(meta["test_loss"]),
                       epochs=int(meta["epochs"]), wall_time_s=float(meta["wall_time_s"]),
                       train_images_per_s=float(meta["train_images_per_s"]), metrics=rows,
                       already_complete=True, drew_curves=drew,
                       test_top1_flip_tta=float(meta["test_top1_flip_tta"]) if "test_top1_flip_tta" in meta else None)


def _own_log(folder: RunDir, pinned: Any) -> bool:
    """Whether a complete run's missing curves may be drawn from its log: the one its weights pin (weights that
    pin none: ``draw_missing_curves`` compares the last test figure). Otherwise a note says why none is drawn."""
    from aperture_zoo.files import file_sha256
    from aperture_zoo.terminal import say

    if pinned is None or folder.curves.exists() or not folder.metrics_path.is_file():
        return True
    if file_sha256(folder.metrics_path) == pinned:
        return True
    say(f"note: curves.png not drawn: {folder.metrics_path} is not the log these weights were trained with (they "
        f"record its SHA-256 {str(pinned)[:12]}...: changed, or another run's); put back the run's own log to draw it")
    return False


def _check_own_log(run: Run, folder: RunDir) -> None:
    """Refuse to continue a log changed since the checkpoint (rows edited, removed, or another run's log copied
    in): the final weights pin the log they end with, so card and push would ship it as this run's history.

    The checkpoint records the SHA-256 of the rows it covers (``RunDir.log_sha256``); older checkpoints
    record none and resume as before. A complete run trains nothing: ``finished_run`` checks its log.
    """
    info = run.ckpt["info"]  # type: ignore[index]
    pinned, epochs = info.get("metrics_sha256"), int(info["epoch"])
    if pinned is None or (epochs >= run.recipe.epochs and folder.weights.is_file()):
        return
    if folder.log_sha256(epochs) != pinned:
        state = "is missing" if not folder.metrics_path.is_file() else "was changed"
        raise CheckpointError(
            f"cannot resume {str(folder.path)!r}: {folder.metrics_path} {state} since the checkpoint (epoch {epochs}) "
            f"was written (its rows up to that epoch are not the ones the checkpoint records, SHA-256 {pinned[:12]}...: "
            "edited, or another run's log); put back this run's own metrics.jsonl, or start a new run")


def _check_own_checkpoint(run: Run, recorded: Recipe) -> None:
    """Refuse a checkpoint that another run wrote (copied into this folder, or this folder's run.json or
    recipe.json replaced).

    Resumed, it would continue other weights under this run's settings and seed (exit 0, and a card
    that names a seed which does not reproduce them), or crash on a head of another size.
    """
    info, saved, ckpt = run.ckpt["info"], run.record, run.ckpt  # type: ignore[index]
    differ = []
    if info.get("run_id") is not None and info.get("run_id") != saved.get("run_id"):
        differ.append("run id")
    if "arch" in info and info["arch"] != saved.get("arch"):
        differ.append("architecture")
    if "seed" in info and str(info["seed"]) != str(saved.get("seed")):
        differ.append(f"seed {info['seed']} vs {saved.get('seed')}")
    if "recipe_sha256" in info and info["recipe_sha256"] != recorded.training_sha256():
        differ.append("recipe")
    # lr: the checkpoint's, or the one a lower-lr resume replaced (killed before its first checkpoint)
    lrs = {recorded.lr, *(c.get("was") for c in saved.get("lr_changes", [])[-1:] if c.get("lr") == recorded.lr)}
    if "lr" in info and info["lr"] not in lrs:
        differ.append(f"lr {info['lr']:g} vs {recorded.lr:g}")
    fc = ckpt["model"].get("fc.weight")
    if fc is not None and fc.shape[0] != run.spec.num_classes:
        differ.append(f"{fc.shape[0]} classes vs {run.spec.num_classes}")
    if differ:
        raise CheckpointError(
            f"cannot resume {str(run.resume_dir)!r}: its checkpoint.safetensors was written by another run than "
            f"the one its run.json and recipe.json describe ({', '.join(differ)}); put back this run's own checkpoint, "
            "run.json and recipe.json, or start a new run")


def _check_same_run(cfg: TrainConfig, run: Run, exact: bool = False) -> float | None:
    """Refuse to resume ``run`` with a model, recipe, seed or data option other than its own.

    A lower peak lr is the one change allowed (a run that diverged goes on from its last good
    checkpoint): ``run.recipe`` takes it, and the lr it replaces is returned. ``exact``: ``cfg`` is a
    whole request (``request.check_same_request``), so no lr change, and no subset means none.
    """
    where, saved = str(run.resume_dir), run.record
    if cfg.model is not None:
        asked = cfg.model if isinstance(cfg.model, ModelSpec) else get_spec(cfg.model)
        if asked.name == saved["arch"]["name"] and isinstance(cfg.model, ModelSpec):  # the run's model, --arch asked
            differ = [k for k, v in asked.arch_dict().items() if v != saved["arch"].get(k)]
            if differ:
                _refuse_option(where, "--arch " + ",".join(_arch_item(k, asked.arch_dict()[k]) for k in differ),
                               "--arch " + ",".join(_arch_item(k, saved["arch"].get(k)) for k in differ))
        elif asked.name != saved["arch"]["name"]:  # the name alone names the run's model (its --arch, its classes)
            raise OtherRun(
                f"cannot resume {where!r}: it trains {saved['arch']['name']} "
                f"{saved['arch']['blocks']}/{saved['arch']['channels']}, not {asked.name} "
                f"{list(asked.blocks)}/{list(asked.channels)}. Resume without a model name, or start "
                "a new run", f"model {saved['arch']['name']} (asked {asked.name})")
    if cfg.recipe is not None and cfg.recipe != run.recipe:
        if run.recipe.differences(cfg.recipe) == ["lr"] and cfg.recipe.lr < run.recipe.lr and not exact:
            _check_same_options(cfg, run)
            was, run.recipe = run.recipe.lr, cfg.recipe
            return was
        detail = ", ".join(f"{k}: run {getattr(run.recipe, k)!r} vs asked {getattr(cfg.recipe, k)!r}"
                           for k in run.recipe.differences(cfg.recipe))
        message = (f"cannot resume {where!r} with a different recipe ({detail}); resume with no recipe options to "
                   "continue it as it was (only a lower --lr may be given), or start a new run")
        if exact:
            raise OtherRun(message, "another recipe: " + ", ".join(
                f"{k} {getattr(run.recipe, k)!r} (asked {getattr(cfg.recipe, k)!r})" for k in run.recipe.differences(cfg.recipe)))
        raise RecipeError(message)
    _check_same_options(cfg, run, exact)
    return None


def _moved_folder(asked: str, saved: dict[str, Any]) -> bool:
    """A folder run (content manifest recorded) resumed with another folder: allowed, as the content decides."""
    data = saved.get("data")
    return (saved.get("dataset") not in ("cifar10", "cifar100") and asked not in ("cifar10", "cifar100")
            and isinstance(data, dict) and "manifest" in data)


def _check_same_options(cfg: TrainConfig, run: Run, exact: bool = False) -> None:
    """Refuse to resume ``run`` with another dataset, seed or data option (``exact``: no subset is one too)."""
    where, saved = str(run.resume_dir), run.record
    if cfg.dataset is not None:
        from aperture_zoo.datasets import dataset_name

        asked_data, used = dataset_name(cfg.dataset), saved.get("dataset", "cifar10")
        if asked_data != used and _moved_folder(asked_data, saved):
            # the same folder at a new path: its manifest is checked against the recorded one when it loads
            run.record = {**saved, "dataset": asked_data, "dataset_moves": [*saved.get("dataset_moves", []),
                                                                            {"from": used, "to": asked_data}]}
        elif asked_data != used:
            raise OtherRun(f"cannot resume {where!r} with --dataset {asked_data}: the run trains on {used}. Drop "
                           "--dataset to continue it, or start a new run", f"--dataset {used} (asked {asked_data})")
    for key, asked_value in (("seed", cfg.seed), ("subset", cfg.subset), ("test_subset", cfg.test_subset),
                             ("val_split", cfg.val_split)):
        used = saved.get(key)
        if key == "val_split" and asked_value is None:  # the default rule, whose share depends on a folder's size:
            used = saved.get("val_split_asked") if exact else None  # None for older runs (only the share recorded)
        if (asked_value is not None or exact) and asked_value != used:
            raise OtherRun(f"cannot resume {where!r} with {key}={asked_value}: the run used {key}={saved.get(key)}. "
                           "Drop the option to continue it, or start a new run",
                           f"{_option(key, saved.get(key))} (asked {_option(key, asked_value)})")
    _check_same_start(cfg, where, saved, exact)


def _check_same_start(cfg: TrainConfig, where: str, saved: dict[str, Any], exact: bool = False) -> None:
    """Refuse to resume with another ``--test-split``, ``--init`` or ``--freeze-backbone`` than the run's own.

    The run's split and starting weights were fixed when it started, so a resume could only drop such
    an option without a word; the same value passes (an init file by its SHA-256, not its name).
    ``exact``: an option left out means its default (the default split, from scratch, every layer trained).
    """
    from aperture_zoo.datasets import DEFAULT_TEST_SPLIT

    from .finetune import init_sha256

    if exact and cfg.test_split is None and (used := saved.get("test_split")) not in (None, DEFAULT_TEST_SPLIT):
        _refuse_option(where, f"no --test-split (default {DEFAULT_TEST_SPLIT:g})", f"--test-split {used:g}")
    used = saved.get("test_split")
    if cfg.test_split is not None and cfg.test_split != used:
        _refuse_option(where, f"--test-split {cfg.test_split:g}",
                       f"--test-split {used:g}" if isinstance(used, float) else "its dataset's own test set")
    init = saved.get("init") if isinstance(saved.get("init"), dict) else None
    if cfg.init is not None and (init is None or init_sha256(cfg.init) != init.get("sha256")):
        _refuse_option(where, f"--init {cfg.init}", "no --init (it trains from scratch)" if init is None else
                       f"--init {init.get('ref')} (SHA-256 {str(init.get('sha256'))[:12]})")
    if exact and cfg.init is None and init is not None:
        _refuse_option(where, "no --init (from scratch)", f"--init {init.get('ref')}")
    frozen = bool(saved.get("freeze_backbone"))
    if (cfg.freeze_backbone or exact) and bool(cfg.freeze_backbone) != frozen:
        _refuse_option(where, "--freeze-backbone" if cfg.freeze_backbone else "no --freeze-backbone",
                       "--freeze-backbone (it trains the head only)" if frozen else "no --freeze-backbone (it trains every layer)")


def _refuse_option(where: str, asked: str, used: str) -> None:
    raise OtherRun(f"cannot resume {where!r} with {asked}: the run used {used}. Drop the option to continue "
                   "it, or start a new run", f"{used} (asked {asked})")


def _option(key: str, value: Any) -> str:
    flag = "--" + key.replace("_", "-")
    return f"no {flag}" if value is None else f"{flag} {value}"


def _arch_item(key: str, value: Any) -> str:
    return f"{key}=" + (",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))

