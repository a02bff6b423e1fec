"""Several seeds of one run, and the mean ± standard deviation that reports them.

One seed's accuracy says little about a recipe: on CIFAR-10 two seeds of the same run differ by
a few tenths of a point. ``fit_seeds`` trains seeds ``seed .. seed+N-1`` of a ``TrainConfig``, each in
its own run folder, and ``mean_std`` summarises their final-epoch top-1 (never a best epoch).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .rundir import RunDir
from .settings import TrainConfig, TrainingError, TrainResult

MAX_SEEDS = 100  # a mean ± std needs a handful; a typo of many digits would otherwise train for ever


def check_seeds(seeds: int, resume: object = None) -> None:
    """``--seeds`` must be a positive count, and names new runs (a resume continues one run)."""
    if seeds < 1:
        raise TrainingError(f"--seeds must be at least 1, got {seeds}")
    if seeds > 1 and resume is not None:
        raise TrainingError("--seeds starts new runs; --resume continues one run: resume each seed's folder alone")
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


def fit_seeds(cfg: TrainConfig, seeds: int, fit: Callable[[TrainConfig], TrainResult]) -> list[TrainResult]:
    """Train ``seeds`` runs of ``cfg`` with seeds ``cfg.seed`` (default 0) onwards, one after another.

    Every seed and every seed's folder is checked before the first one trains: a refusal at seed 3 would
    otherwise come after hours of seeds 1 and 2, and without the mean ± std they were trained for."""
    check_seeds(seeds, cfg.resume)
    if seeds == 1:  # one run exactly as asked (a resume keeps its recorded seed)
        return [fit(cfg)]
    first = 0 if cfg.seed is None else cfg.seed
    configs = [seed_config(cfg, s, seeds) for s in range(first, first + seeds)]  # each checks its seed's range
    for one in configs:
        if one.out_dir is not None:
            RunDir.check_new(one.out_dir)
    return [fit(one) for one in configs]


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
