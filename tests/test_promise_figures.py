"""The README's reported figures, each checked against a computation written apart from the product.

"ECE % (15 bins)": equal-width confidence bins, bin i holding (i/15, (i+1)/15]. "The published
weights saw every training image, so their temperature is fitted on the test set" (all of it) "and
every calibrated figure is cross-fitted". "``--seeds N`` ... reports the mean ± sample standard
deviation of their final-epoch top-1", and flip TTA is "recorded apart". CIFAR-100 runs from
scratch normalise by CIFAR-100's published per-channel mean and std.
"""

from __future__ import annotations

import statistics
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from aperture_zoo.calibration import (ece, fit_temperature, reliability_bins, softmax,
                                      stratified_halves)


def _ece_by_hand(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> tuple[float, list[int]]:
    """ECE with exact arithmetic: bin i holds confidences c with i/n < c <= (i+1)/n."""
    bins: list[list[tuple[Fraction, int]]] = [[] for _ in range(n_bins)]
    for p, y in zip(probs, labels):
        conf = Fraction(float(p.max()))
        i = next(k for k in range(n_bins) if Fraction(k, n_bins) < conf <= Fraction(k + 1, n_bins))
        bins[i].append((conf, int(int(p.argmax()) == int(y))))
    total = Fraction(0)
    for members in bins:
        if members:
            acc = Fraction(sum(c for _, c in members), len(members))
            mean_conf = sum((c for c, _ in members), Fraction(0)) / len(members)
            total += len(members) * abs(acc - mean_conf)
    return float(total / len(probs)), [len(m) for m in bins]


def test_ece_uses_15_equal_bins_closed_on_the_right() -> None:
    # confidences exactly on bin edges (k/4 is exact in binary) share a bin with the one below them
    probs = np.array([[0.5, 0.5, 0.0], [0.6, 0.4, 0.0], [0.75, 0.25, 0.0], [0.7, 0.3, 0.0], [1.0, 0.0, 0.0]])
    labels = np.array([1, 0, 1, 0, 0])
    want, counts = _ece_by_hand(probs, labels, 4)
    assert counts == [0, 1, 3, 1]  # (0.25, 0.5]: 0.5; (0.5, 0.75]: 0.6, 0.75, 0.7; (0.75, 1]: 1.0
    assert ece(probs, labels, 4) == pytest.approx(want, abs=1e-12)
    assert reliability_bins(probs, labels, 4)["count"] == counts
    # 15 bins (the default) on random probabilities
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 10)) * 3
    labels = rng.integers(0, 10, 400)
    probs = softmax(logits)
    want, counts = _ece_by_hand(probs, labels)
    assert ece(probs, labels) == pytest.approx(want, abs=1e-12)
    assert reliability_bins(probs, labels)["count"] == counts


def _halves_with_different_temperatures() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 60)
    a, b = stratified_halves(labels)
    logits = rng.normal(size=(len(labels), 10)) + 2.5 * np.eye(10)[labels]
    logits[a] *= 3.0
    logits[b] *= 0.5
    return logits, labels


def test_the_published_temperature_is_fitted_on_all_the_test_images() -> None:
    from aperture_zoo.train.calibrate import logit_figures
    import torch

    logits, labels = _halves_with_different_temperatures()
    on_all = fit_temperature(logits, labels)
    out = logit_figures(logits, None, labels, torch.nn.Identity())  # what eval.json (and the card) records
    assert out["temperature"] == pytest.approx(on_all, rel=1e-6)
    scaling = out["temperature_scaling"]  # the one-temperature calibrator's figures, beside the chosen calibrator's
    assert scaling["temperature"] == pytest.approx(on_all, rel=1e-6)
    assert all(h != pytest.approx(on_all, rel=0.05) for h in scaling["halves"])  # not a half's
    # and the calibrated figures are held out: each half scored at the other half's temperature
    a, b = stratified_halves(labels)
    t_a, t_b = fit_temperature(logits[a], labels[a]), fit_temperature(logits[b], labels[b])
    assert scaling["ece"] == pytest.approx(np.mean([ece(softmax(logits[b], t_a), labels[b]),
                                                           ece(softmax(logits[a], t_b), labels[a])]))


def _result(top1: float, tta: float | None, seed: int):
    from aperture_zoo.train.settings import TrainResult

    return TrainResult(Path(f"runs/r-seed{seed}"), top1, 0.5, 3, 1.0, 10.0, test_top1_flip_tta=tta)


def test_flip_tta_mean_and_std_over_seeds_are_those_of_the_flip_tta_figures() -> None:
    from aperture_zoo.train.seeds import seeds_summary
    from aperture_zoo.train.zoo import seed_stats, seeds_markdown

    plain, flipped = [93.1, 93.9, 94.4], [94.0, 94.2, 95.6]
    doc = seeds_summary([_result(p, f, s) for s, (p, f) in enumerate(zip(plain, flipped))], [0, 1, 2])
    assert doc["test_top1_mean"] == pytest.approx(statistics.fmean(plain))
    assert doc["test_top1_std"] == pytest.approx(statistics.stdev(plain))
    assert doc["test_top1_flip_tta_mean"] == pytest.approx(statistics.fmean(flipped))
    assert doc["test_top1_flip_tta_std"] == pytest.approx(statistics.stdev(flipped))
    assert [r["test_top1_flip_tta"] for r in doc["runs"]] == flipped
    assert "test_top1_flip_tta_mean" not in seeds_summary([_result(93.0, None, 0), _result(94.0, None, 1)], [0, 1])

    rows = [{"model": "resnet10", "status": "done", "seed": s, "top1": p, "top1_flip_tta": f}
            for s, (p, f) in enumerate(zip(plain, flipped))]
    [entry] = seed_stats(rows)
    assert entry["top1_mean"] == pytest.approx(statistics.fmean(plain))
    assert entry["top1_flip_tta_mean"] == pytest.approx(statistics.fmean(flipped))
    assert entry["top1_flip_tta_std"] == pytest.approx(statistics.stdev(flipped)) and entry["n_flip_tta"] == 3
    md = seeds_markdown([entry])
    assert (f"| {statistics.fmean(plain):.2f} ± {statistics.stdev(plain):.2f} "
            f"| {statistics.fmean(flipped):.2f} ± {statistics.stdev(flipped):.2f} |") in md


# CIFAR-100's per-channel statistics as the literature gives them (e.g. the Cutout and
# Wide-ResNet training scripts): mean 0.5071, 0.4865, 0.4409 and std 0.2673, 0.2564, 0.2762.
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def test_a_cifar100_run_from_scratch_normalises_by_cifar100s_mean_and_std(tmp_path: Path) -> None:
    from cifar_synth import write_cifar100
    from aperture_zoo.datasets import load_dataset
    from aperture_zoo.registry import get_spec
    from aperture_zoo.train.dataset_run import new_run

    write_cifar100(tmp_path)
    mean, std = load_dataset("cifar100", tmp_path).mean_std()
    assert mean == pytest.approx(CIFAR100_MEAN) and std == pytest.approx(CIFAR100_STD)
    spec, run = new_run(get_spec("resnet10"), {"seed": 0}, "cifar100", None, None, False, tmp_path, False)
    assert spec.mean == pytest.approx(CIFAR100_MEAN) and spec.std == pytest.approx(CIFAR100_STD)
    assert spec.num_classes == 100 and run["dataset"] == "cifar100"
