"""Calibrated probabilities: choosing and fitting a calibrator, and the scores that judge it.

``fit_calibrator(logits, labels)`` is the one entry point that makes the calibrator an app uses
(published weights, runs with a validation split, fine-tunes): every kind of
``calibrators.KINDS`` is fitted by NLL on one stratified half of the images and scored by NLL on
the other, both ways, and the kind with the lowest held-out NLL is fitted on all of them. The
one-temperature fit (Guo et al. 2017) is kept for comparison: a 1-D convex problem in log T,
solved by golden-section search. ``cross_fit`` measures a calibrator where the only held-out data
is the test set: fitted on one stratified half, scored on the other, both ways. Scores: ECE and
classwise-ECE (15 bins), NLL, Brier. Pure numpy (no scipy/torch dependency, so the torch-free
ONNX path and ``aperture list`` can share this module).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .calibrator_fit import fit_kind
from .calibrators import KINDS, Calibrator, CalibratorError, TemperatureError, check_temperature

__all__ = ["Calibrator", "CalibratorError", "TemperatureError", "check_temperature", "fit_calibrator", "fit_kind"]

ECE_BINS = 15
MIN_HALF = 20  # images in each stratified half below which nothing is cross-fitted or chosen
_LOG_T_RANGE = (math.log(0.05), math.log(20.0))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _log_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true class."""
    labels = np.asarray(labels, dtype=np.int64)
    return float(-_log_softmax(logits, temperature)[np.arange(len(labels)), labels].mean())


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over images of the squared distance to the one-hot label, summed over classes (0..2)."""
    labels = np.asarray(labels, dtype=np.int64)
    onehot = np.zeros_like(probs, dtype=np.float64)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Per equal-width confidence bin: image count, mean confidence and accuracy (empty bins: 0)."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    # bin i holds (i/n, (i+1)/n]; confidence is > 0, so the first bin's lower edge is never hit.
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    safe = np.maximum(count, 1)
    return {"count": count.tolist(),
            "confidence": (np.bincount(idx, conf, n_bins) / safe).tolist(),
            "accuracy": (np.bincount(idx, correct, n_bins) / safe).tolist()}


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error: count-weighted mean |accuracy - confidence| over the bins (0..1)."""
    b = reliability_bins(probs, labels, n_bins)
    count = np.asarray(b["count"])
    gap = np.abs(np.asarray(b["accuracy"]) - np.asarray(b["confidence"]))
    return float((count * gap).sum() / max(count.sum(), 1))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, tol: float = 1e-5) -> float:
    """The T minimising the NLL of softmax(logits / T): golden-section search on log T in [0.05, 20]."""
    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) == 0:
        raise TemperatureError("a temperature needs at least one labelled image to be fitted on")
    lo, hi = _LOG_T_RANGE
    g = (math.sqrt(5) - 1) / 2
    a, b = lo + (1 - g) * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    while hi - lo > tol:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - g) * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return math.exp((lo + hi) / 2)


def scores(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> dict[str, float]:
    """ECE and classwise-ECE (15 bins), NLL and Brier of softmax(logits / T), as fractions (ECE 0.012 = 1.2 %)."""
    return prob_scores(softmax(logits, temperature), labels)


def classwise_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Mean over classes of the ECE of that class's probability against "is that class" (Kull et al.
    2019): every probability an app may threshold is judged, not only the top one (0..1)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    total = 0.0
    for c in range(probs.shape[1]):
        conf = probs[:, c]
        idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
        total += np.abs(np.bincount(idx, conf, n_bins) - np.bincount(idx, labels == c, n_bins)).sum()
    return float(total / (probs.shape[1] * max(len(labels), 1)))


def prob_scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """ECE, classwise-ECE, NLL and Brier of probabilities (NLL of a zero probability: that of 1e-300)."""
    labels = np.asarray(labels, dtype=np.int64)
    p_true = probs[np.arange(len(labels)), labels]
    return {"ece": ece(probs, labels), "classwise_ece": classwise_ece(probs, labels),
            "nll": float(-np.log(np.maximum(p_true, 1e-300)).mean()), "brier": brier(probs, labels)}


def stratified_halves(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index sets, each holding half of every class (shuffled with ``seed``)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    a, b = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        a.append(idx[: len(idx) // 2])
        b.append(idx[len(idx) // 2:])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))


def unfit_reason(logits: np.ndarray, labels: np.ndarray) -> str | None:
    """Why no calibrator may be fitted on these logits (None: one may): the model gets every image right.

    A calibrator learns how often the model is wrong at each confidence; on a set without a wrong
    answer the NLL only falls as T -> 0, and the "calibrated" model would be the most overconfident one.
    One wrong answer bounds T away from 0 (its loss grows as 1/T), and the held-out choice of kind
    (``choose_calibrator``) then penalises a fit that is overconfident on the other half.
    """
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if len(y) and bool((z.argmax(1) != y).any()):
        return None
    return (f"the model gets all {len(y)} images right, so nothing shows how often it is wrong at each confidence "
            "(a calibrator fitted there only learns to be overconfident)")


def can_cross_fit(labels: np.ndarray) -> bool:
    """Whether both stratified halves hold ``MIN_HALF`` images: below that a fit is noise."""
    return min(map(len, stratified_halves(labels))) >= MIN_HALF


def choose_calibrator(logits: np.ndarray, labels: np.ndarray, fitted_on: str = "",
                      kinds: tuple[str, ...] = KINDS) -> tuple[Calibrator, dict[str, float]]:
    """``fit_calibrator``'s choice and the held-out NLL of every kind it compared ({} when too few
    images to compare: then one temperature)."""
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    held: dict[str, float] = {}
    if len(kinds) > 1 and len(y) and can_cross_fit(y):
        a, b = stratified_halves(y)
        for kind in kinds:
            try:
                held[kind] = float(np.mean([prob_scores(fit_kind(kind, z[f], y[f]).apply(z[s]), y[s])["nll"]
                                            for f, s in ((a, b), (b, a))]))
            except CalibratorError:  # a kind that cannot be fitted here is not chosen
                held[kind] = math.inf
    for kind in sorted(held, key=held.__getitem__):
        try:
            return fit_kind(kind, z, y, fitted_on), held
        except CalibratorError:
            continue
    return fit_kind("temperature", z, y, fitted_on), held


def fit_calibrator(logits: np.ndarray, labels: np.ndarray, fitted_on: str = "",
                   kinds: tuple[str, ...] = KINDS) -> Calibrator:
    """The calibrator to ship for these held-out logits and labels: the kind with the lowest NLL
    held out (fitted on one stratified half, scored on the other, both ways), fitted on them all.

    The one entry point for published weights, runs with a validation split and fine-tunes, so a
    user's own model is calibrated the same way. Too few images to compare kinds: one temperature.
    """
    return choose_calibrator(logits, labels, fitted_on, kinds)[0]


def _scored(z: np.ndarray, y: np.ndarray, parts: list[tuple[np.ndarray, Calibrator]]) -> tuple[dict[str, Any], np.ndarray]:
    """Scores of ``z`` where each part (row indices, calibrator) is calibrated by its own calibrator:
    the mean over parts, and the probabilities of all rows."""
    probs = np.empty_like(z)
    per = []
    for rows, cal in parts:
        probs[rows] = cal.apply(z[rows])
        per.append(prob_scores(probs[rows], y[rows]))
    return {k: float(np.mean([h[k] for h in per])) for k in per[0]}, probs


def _figures(z: np.ndarray, y: np.ndarray, temps: list[tuple[np.ndarray, Calibrator]],
             cals: list[tuple[np.ndarray, Calibrator]]) -> dict[str, Any]:
    raw = softmax(z)
    out: dict[str, Any] = {"raw": prob_scores(raw, y), "reliability": {"uncalibrated": reliability_bins(raw, y)}}
    if temps:
        out["temperature"], p = _scored(z, y, temps)
        out["reliability"]["temperature"] = reliability_bins(p, y)
    if cals:
        out["calibrator"], p = _scored(z, y, cals)
        out["reliability"]["calibrated"] = reliability_bins(p, y)
    return out


def cross_fit(logits: np.ndarray, labels: np.ndarray, seed: int = 0, kinds: tuple[str, ...] = KINDS,
              others: dict[str, tuple[np.ndarray, np.ndarray | None]] | None = None) -> dict[str, Any]:
    """Raw, one temperature and ``fit_calibrator``, each fitted on one stratified half and scored
    on the other, both ways (the mean of the two halves).

    For weights trained on every training image the test set is the only held-out data; this way
    no reported figure is measured on the images its calibrator was fitted on (the kind, too, is
    chosen inside the fitting half). ``others`` scores more logits of the same images with the same
    halves' fits: ``name -> (logits, positions)``, positions the rows' indices into ``logits``
    (None: all rows, in order), e.g. flip-averaged or corrupted copies. The published calibrator is
    ``fit_calibrator`` on all the images (the best estimate), not part of this.
    """
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    a, b = stratified_halves(y, seed)
    temps, cals, halves = [], [], []
    for fit_on in (a, b):
        temps.append(Calibrator("temperature", fit_temperature(z[fit_on], y[fit_on])))
        cal, held = choose_calibrator(z[fit_on], y[fit_on], kinds=kinds)
        cals.append(cal)
        halves.append({"calibrator": cal.to_dict(),  # a kind that could not be fitted: None (JSON has no inf)
                       "held_out_nll": {k: v if math.isfinite(v) else None for k, v in held.items()}})
    score_sets = (b, a)
    out = _figures(z, y, list(zip(score_sets, temps)), list(zip(score_sets, cals)))
    out["temperature"]["halves"] = [t.temperature for t in temps]
    out["calibrator"]["halves"] = halves
    out["others"] = {}
    for name, (x, pos) in (others or {}).items():
        pos = np.arange(len(y)) if pos is None else np.asarray(pos)
        parts = [np.flatnonzero(np.isin(pos, s)) for s in score_sets]
        out["others"][name] = _figures(np.asarray(x, dtype=np.float64), y[pos], list(zip(parts, temps)),
                                       list(zip(parts, cals)))
    return out


def report(logits: np.ndarray, labels: np.ndarray, calibrator: Calibrator | None,
           temperature: float | None = None) -> dict[str, Any]:
    """``cross_fit``'s figures for a calibrator (and a one-temperature comparison) fitted elsewhere,
    e.g. on a run's validation split: applied as they are, nothing fitted here."""
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    every = np.arange(len(y))
    temps = [(every, Calibrator("temperature", check_temperature(temperature)))] if temperature is not None else []
    return _figures(z, y, temps, [(every, calibrator)] if calibrator is not None else [])
