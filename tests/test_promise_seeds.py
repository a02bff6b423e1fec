"""``--seeds N``: "trains seeds ``--seed`` .. ``--seed``+N−1 and reports the mean ± sample standard
deviation of their final-epoch top-1"; "seeds 0, 1, 2, each in its own run folder". A stand-in for
``fit`` records what each run is asked, so no training is needed to check what is trained.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from aperture_zoo.train.seeds import fit_seeds, format_mean_std, seeds_summary
from aperture_zoo.train.settings import TrainConfig, TrainingError, TrainResult


def _fake_fit(asked: list[TrainConfig]):
    def fit(cfg: TrainConfig) -> TrainResult:
        asked.append(cfg)
        seed = -1 if cfg.seed is None else cfg.seed
        return TrainResult(Path(cfg.out_dir or f"runs/r{seed}"), 90.0 + seed, 0.3, 2, 1.5, 100.0)
    return fit


@pytest.mark.parametrize("first, want", [(None, [0, 1, 2]), (7, [7, 8, 9])])
def test_n_seeds_train_seed_to_seed_plus_n_minus_1_each_in_its_own_folder(first, want, tmp_path: Path) -> None:
    asked: list[TrainConfig] = []
    results = fit_seeds(TrainConfig(model="resnet10", seed=first, out_dir=tmp_path / "out"), 3, _fake_fit(asked))
    assert [c.seed for c in asked] == want and len(results) == 3
    assert [Path(c.out_dir) for c in asked] == [tmp_path / "out" / f"seed{s}" for s in want]
    assert all(c.model == "resnet10" for c in asked)
    two: list[TrainConfig] = []  # two seeds are two folders too
    fit_seeds(TrainConfig(model="resnet10", seed=first, out_dir=tmp_path / "two"), 2, _fake_fit(two))
    assert [Path(c.out_dir) for c in two] == [tmp_path / "two" / f"seed{s}" for s in want[:2]]
    default = []  # no --out: each run names its own runs/NAME-TIME folder
    fit_seeds(TrainConfig(model="resnet10", seed=first), 2, _fake_fit(default))
    assert [c.out_dir for c in default] == [None, None] and [c.seed for c in default] == want[:2]


def test_one_seed_is_the_run_exactly_as_asked(tmp_path: Path) -> None:
    asked: list[TrainConfig] = []
    cfg = TrainConfig(model="resnet10", out_dir=tmp_path / "out")
    fit_seeds(cfg, 1, _fake_fit(asked))
    assert asked == [cfg]  # its folder is --out itself, and a resume keeps its recorded seed (None here)
    resumed: list[TrainConfig] = []
    fit_seeds(TrainConfig(resume=tmp_path / "run"), 1, _fake_fit(resumed))
    assert resumed[0].seed is None and resumed[0].resume == tmp_path / "run"


def test_seeds_are_refused_with_resume_or_below_one(tmp_path: Path) -> None:
    asked: list[TrainConfig] = []
    with pytest.raises(TrainingError) as info:
        fit_seeds(TrainConfig(resume=tmp_path / "run"), 2, _fake_fit(asked))
    assert str(info.value) == ("--seeds starts new runs; --resume continues runs as they were started: resume the "
                               "--seeds --out folder (every seed) or one seed's folder, without --seeds")
    with pytest.raises(TrainingError, match="--seeds must be at least 1, got 0"):
        fit_seeds(TrainConfig(model="resnet10"), 0, _fake_fit(asked))
    # ninth hostile try, N5: no upper bound, and a bad seed or a taken seed folder was found only at its turn
    with pytest.raises(TrainingError, match="--seeds 101 is more runs than a mean ± std needs; give at most 100"):
        fit_seeds(TrainConfig(model="resnet10"), 101, _fake_fit(asked))
    with pytest.raises(TrainingError, match=r"--seed must be in 0\.\.4294967295"):
        fit_seeds(TrainConfig(model="resnet10", seed=2**32 - 1, out_dir=tmp_path / "big"), 2, _fake_fit(asked))
    taken = tmp_path / "taken" / "seed1"
    taken.mkdir(parents=True)
    (taken / "checkpoint.safetensors").write_bytes(b"x")
    with pytest.raises(Exception, match="already holds a training run"):
        fit_seeds(TrainConfig(model="resnet10", out_dir=tmp_path / "taken"), 2, _fake_fit(asked))
    assert asked == []  # refused before anything trains


def test_the_summary_is_each_run_and_the_mean_and_sample_std() -> None:
    results = [TrainResult(Path(f"runs/s{s}"), top1, 0.3, 2, 10.0 + s, 100.0) for s, top1 in
               enumerate([93.0, 94.5, 94.0])]
    doc = seeds_summary(results, [4, 5, 6])
    assert doc["runs"] == [{"seed": s, "run_dir": f"runs/s{i}", "test_top1": r.test_top1, "test_top1_flip_tta": None,
                            "wall_time_s": 10.0 + i} for i, (s, r) in enumerate(zip([4, 5, 6], results))]
    assert doc["n"] == 3
    assert doc["test_top1_mean"] == pytest.approx(statistics.fmean([93.0, 94.5, 94.0]))
    assert doc["test_top1_std"] == pytest.approx(statistics.stdev([93.0, 94.5, 94.0]))  # n - 1
    assert "test_top1_flip_tta_mean" not in doc  # no flip TTA figures: none reported


def test_the_printed_figure_is_mean_plus_minus_std_with_n() -> None:
    assert format_mean_std([94.0, 95.0, 96.5]) == f"95.17 ± {statistics.stdev([94.0, 95.0, 96.5]):.2f} (n=3)"
    assert format_mean_std([94.52]) == "94.52 (n=1)"  # one value has no spread
    assert format_mean_std([94.5, 94.7], digits=1) == "94.6 ± 0.1 (n=2)"
    assert format_mean_std([]) == "—"
