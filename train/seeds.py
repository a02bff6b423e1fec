"""Several seeds of one run, and the mean ± standard deviation that reports them.

One seed's accuracy says little about a recipe: on CIFAR-10 two seeds of the same run differ by
a few tenths of a point. ``fit_seeds`` trains seeds ``seed .. seed+N-1`` of a ``TrainConfig``, each in
its own run folder, and ``mean_std`` summarises their final-epoch top-1 (never a best epoch).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aperture_zoo.files import CHECKPOINT_FILENAME, RUN_FILENAME, SEEDS_FILENAME, atomic_write_text, read_json

from .rundir import RunDir
from .settings import TrainConfig, TrainingError, TrainResult

MAX_SEEDS = 100  # a mean ± std needs a handful; a typo of many digits would otherwise train for ever


def check_seeds(seeds: int, resume: object = None) -> None:
    """``--seeds`` must be a positive count, and names new runs (a resume continues one run)."""
    if seeds < 1:
        raise TrainingError(f"--seeds must be at least 1, got {seeds}")
    if seeds > 1 and resume is not None:
        raise TrainingError("--seeds starts new runs; --resume continues runs as they were started: resume the "
                            "--seeds --out folder (every seed) or one seed's folder, without --seeds")
    if seeds > MAX_SEEDS:
        raise TrainingError(f"--seeds {seeds} is more runs than a mean ± std needs; give at most {MAX_SEEDS}")


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); the std is None for fewer than two values."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def format_mean_std(values: Sequence[float], digits: int = 2) -> str:
    """``"94.52 ± 0.11 (n=3)"``; one value has no spread to show: ``"94.52 (n=1)"``."""
    mean, std = mean_std(values)
    if mean is None:
        return "—"
    spread = "" if std is None else f" ± {std:.{digits}f}"
    return f"{mean:.{digits}f}{spread} (n={len(values)})"


def seed_config(cfg: TrainConfig, seed: int, seeds: int) -> TrainConfig:
    """``cfg`` for one seed: with several seeds and an ``out_dir``, each seed gets ``out_dir/seed<K>``."""
    out = cfg.out_dir
    if seeds > 1 and out is not None:
        out = Path(out) / f"seed{seed}"
    return dataclasses.replace(cfg, seed=seed, out_dir=out)


def seed_folders(parent: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(seed, folder) of the runs of a ``--seeds`` parent folder (``seed<K>`` holding a run.json), by seed;
    empty for a run folder itself or anything else."""
    parent = Path(parent)
    if not parent.is_dir() or (parent / RUN_FILENAME).exists():
        return []
    found = [(int(m.group(1)), p) for p in parent.iterdir()
             if (m := re.fullmatch(r"seed(\d+)", p.name)) and (p / RUN_FILENAME).is_file()]
    return sorted(found)


def fit_seeds(cfg: TrainConfig, seeds: int, fit: Callable[[TrainConfig], TrainResult]) -> list[TrainResult]:
    """Train ``seeds`` runs of ``cfg`` with seeds ``cfg.seed`` (default 0) onwards, one after another.

    Every seed and every seed's folder is checked before the first one trains: a refusal at seed 3 would
    otherwise come after hours of seeds 1 and 2, and without the mean ± std they were trained for. The same
    command run again after a kill continues (``_continued``); ``resume`` of the parent folder continues its
    seed folders as they were started."""
    check_seeds(seeds, cfg.resume)
    if cfg.resume is not None and is_seeds_parent(cfg.resume):
        return [fit(one) for one in _parent_configs(cfg)]
    if seeds == 1:  # one run exactly as asked (a resume keeps its recorded seed)
        return [fit(cfg)]
    first = 0 if cfg.seed is None else cfg.seed
    asked = list(range(first, first + seeds))
    configs = [_continued(seed_config(cfg, s, seeds)) for s in asked]  # each checks its seed
    if cfg.out_dir is not None:
        _write_record(Path(cfg.out_dir), cfg, asked)
    return [fit(one) for one in configs]


def is_seeds_parent(folder: str | os.PathLike[str]) -> bool:
    return (Path(folder) / SEEDS_FILENAME).is_file() or bool(seed_folders(folder))


def parent_seeds(parent: str | os.PathLike[str]) -> list[int]:
    """The seeds ``resume`` of a ``--seeds`` parent trains, in order: those its record asks and any other seed
    folder there (checked against the record's request, so another request's is refused, never averaged)."""
    return sorted(set(_read_record(Path(parent))["seeds"]) | {s for s, _ in seed_folders(parent)})


def request_record(cfg: TrainConfig) -> dict[str, Any]:
    """A ``--seeds`` command's request as its parent folder records it: everything but the seed that makes a run
    (the model, recipe, dataset by its content, data and start options), and how it runs."""
    from aperture_zoo.datasets import dataset_name, is_builtin
    from aperture_zoo.files import user_path
    from aperture_zoo.registry import ModelSpec, get_spec

    from .recipes import FAST, FINETUNE
    from .request import folder_manifest
    from .finetune import init_sha256
    from .settings import data_root

    spec = cfg.model if isinstance(cfg.model, ModelSpec) else get_spec(str(cfg.model))
    dataset = dataset_name(cfg.dataset)
    init = None if cfg.init is None else str(cfg.init)
    if init is not None and user_path(init).exists():  # a file or run folder: found from any directory
        init = str(user_path(init).resolve())
    return {"request": {
        "model": json.loads(spec.to_json()), "recipe": (cfg.recipe or (FINETUNE if init else FAST)).validate().to_dict(),
        "dataset": dataset, "content_sha256": None if is_builtin(dataset) else folder_manifest(dataset).sha256,
        "subset": cfg.subset, "test_subset": cfg.test_subset, "val_split": cfg.val_split, "test_split": cfg.test_split,
        "init": init, "init_sha256": None if init is None else init_sha256(init),
        "freeze_backbone": bool(cfg.freeze_backbone)},
        "runs_with": {"data_dir": data_root(cfg.data_dir) if is_builtin(dataset) else None, "download": cfg.download,
                      "device": cfg.device, "compile": cfg.compile}}


def _same_request_key(request: dict[str, Any]) -> dict[str, Any]:
    """A folder counts by its content and an init file by its bytes, not by their paths."""
    return {k: v for k, v in request.items() if not (k == "dataset" and request.get("content_sha256"))
            and not (k == "init" and request.get("init_sha256"))}


def _write_record(parent: Path, cfg: TrainConfig, asked: list[int]) -> None:
    """Record the request before its first seed trains; a parent recorded for another request is refused."""
    new = request_record(cfg)
    if (parent / SEEDS_FILENAME).is_file():
        old = _read_record(parent)
        was, now = _same_request_key(old["request"]), _same_request_key(new["request"])
        if was != now:
            raise TrainingError(f"{str(parent)!r} holds the seeds of another --seeds command ({SEEDS_FILENAME}): "
                                f"{_differences(old['request'], new['request'], was, now)}. Use another --out, or run "
                                "again with that command's options")
        asked = sorted(set(old["seeds"]) | set(asked))
    text = json.dumps({**new, "seeds": asked}, indent=2) + "\n"
    atomic_write_text(parent / SEEDS_FILENAME, text)


def _differences(old: dict[str, Any], new: dict[str, Any], was: dict[str, Any], now: dict[str, Any]) -> str:
    """What differs, by option: a folder or init file by its path, saying that its content differs."""
    out = []
    for key in sorted(set(was) | set(now)):
        a, b = was.get(key), now.get(key)
        if a == b:
            continue
        if key in ("content_sha256", "init_sha256"):
            name = "dataset" if key == "content_sha256" else "init"
            out.append(f"{name} {old.get(name)} (asked {new.get(name)}, whose content differs)")
        elif isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key} {k} {a.get(k)!r} (asked {b.get(k)!r})" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            out.append(f"{key} {a!r} (asked {b!r})")
    return "; ".join(out)


def _read_record(parent: Path) -> dict[str, Any]:
    if not (parent / SEEDS_FILENAME).is_file():
        names = ", ".join(str(folder) for _, folder in seed_folders(parent))
        raise TrainingError(f"{str(parent)!r} has no {SEEDS_FILENAME} (written by --seeds commands since this "
                            f"version), so nothing says its seed folders are one request: resume them one by one "
                            f"(aperture train --resume DIR for each of {names})")
    fix = f"it records the --seeds command that made {str(parent)!r}; run that command again instead"
    record = read_json(parent / SEEDS_FILENAME, fix, TrainingError)
    seeds = record.get("seeds") if isinstance(record, dict) else None
    if not (isinstance(seeds, list) and all(type(s) is int and s >= 0 for s in seeds)
            and isinstance(record.get("request"), dict) and isinstance(record.get("runs_with"), dict)):
        raise TrainingError(f"{parent / SEEDS_FILENAME} is damaged; {fix}")
    return record


def _parent_configs(cfg: TrainConfig) -> list[TrainConfig]:
    """``resume`` of a ``--seeds`` parent: every seed of its recorded request, each checked to be of it
    (``_continued``); a seed killed before its folder existed starts. Options given on this call (a lower
    --lr, a moved --dataset, the device) apply as to the resume of one run."""
    from aperture_zoo.registry import ModelSpec

    from .recipes import Recipe

    parent = Path(cfg.resume)  # type: ignore[arg-type]
    record = _read_record(parent)
    req, how = record["request"], record["runs_with"]
    asked = TrainConfig(
        model=ModelSpec.from_dict(req["model"]), recipe=Recipe.from_dict(req["recipe"]),
        dataset=cfg.dataset or req["dataset"], subset=req["subset"], test_subset=req["test_subset"],
        val_split=req["val_split"], test_split=req["test_split"], init=req["init"],
        freeze_backbone=bool(req["freeze_backbone"]), progress=cfg.progress, sync_interval_s=cfg.sync_interval_s,
        time_budget_s=cfg.time_budget_s, **{k: getattr(cfg, k) if getattr(cfg, k) is not None else how.get(k)
                                            for k in ("data_dir", "download", "device", "compile")})
    configs = []
    for seed in parent_seeds(parent):
        one = _continued(dataclasses.replace(asked, seed=seed, out_dir=parent / f"seed{seed}"))
        configs.append(one if one.resume is None else dataclasses.replace(cfg, resume=one.resume))
    return configs


def _continued(one: TrainConfig) -> TrainConfig:
    """One seed's run: a new one in its folder, or the run the folder holds when it is this very request (the
    command run again after a kill): complete, it is kept as it is; checkpointed, it resumes. Another run there
    is refused, naming what differs."""
    if one.out_dir is None:
        return one
    folder = Path(one.out_dir)
    if not (folder / RUN_FILENAME).is_file() or not (folder / CHECKPOINT_FILENAME).exists():
        RunDir.check_new(folder)  # missing, empty, or stopped before its first checkpoint: starts again
        return one
    from .checkpoint import OtherRun
    from .request import check_same_request

    try:
        check_same_request(one, folder)
    except OtherRun as exc:
        raise TrainingError(f"{str(folder)!r} holds another run than this seed's: {exc.what}. Use another --out, "
                            "or run again with the options that run was started with") from None
    # its settings are the request's (checked above): continued as it was started
    return dataclasses.replace(one, resume=folder, out_dir=None, model=None, recipe=None)


def seeds_summary(results: Sequence[TrainResult], seeds: Sequence[int]) -> dict[str, Any]:
    """What ``aperture train --seeds N`` reports: each run, and mean ± std of their final-epoch top-1."""
    plain = [r.test_top1 for r in results]
    tta = [r.test_top1_flip_tta for r in results if r.test_top1_flip_tta is not None]
    mean, std = mean_std(plain)
    out: dict[str, Any] = {
        "runs": [{"seed": s, "run_dir": str(r.run_dir), "test_top1": r.test_top1,
                  "test_top1_flip_tta": r.test_top1_flip_tta, "wall_time_s": r.wall_time_s}
                 for s, r in zip(seeds, results)],
        "n": len(plain), "test_top1_mean": mean, "test_top1_std": std,
    }
    if tta:
        out["test_top1_flip_tta_mean"], out["test_top1_flip_tta_std"] = mean_std(tta)
    return out
