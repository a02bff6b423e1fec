"""Several seeds of one run, and the mean ± standard deviation that reports them.

One seed's accuracy says little about a recipe: on CIFAR-10 two seeds of the same run differ by
a few tenths of a point. ``fit_seeds`` trains seeds ``seed .. seed+N-1`` of a ``TrainConfig``, each in
its own run folder, and ``mean_std`` summarises their final-epoch top-1 (never a best epoch).
"""

from __future__ import annotations

import dataclasses
import os
import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aperture_zoo.files import CHECKPOINT_FILENAME, RUN_FILENAME

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
    parent = seed_folders(cfg.resume) if cfg.resume is not None else []
    if parent:
        return [fit(dataclasses.replace(cfg, resume=folder)) for _, folder in parent]
    if seeds == 1:  # one run exactly as asked (a resume keeps its recorded seed)
        return [fit(cfg)]
    first = 0 if cfg.seed is None else cfg.seed
    configs = [_continued(seed_config(cfg, s, seeds)) for s in range(first, first + seeds)]  # each checks its seed
    return [fit(one) for one in configs]


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
