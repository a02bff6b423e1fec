"""Calibrated probabilities: temperature scaling (Guo et al. 2017) and the scores that judge it.

One scalar T divides the logits before the softmax; it is fitted by minimising the negative
log-likelihood on images the reported figures are not measured on. The fit is a 1-D convex
problem in log T, solved here by golden-section search in numpy (no scipy/torch dependency, so
the torch-free ONNX path and ``aperture list`` can share this module). Pure numpy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import ApertureError

ECE_BINS = 15
_LOG_T_RANGE = (math.log(0.05), math.log(20.0))


class TemperatureError(ApertureError, ValueError):
    """A temperature that is not a finite number above zero."""


def check_temperature(value: Any, where: str = "the temperature") -> float:
    """``value`` as a float, or a one-line error: T must be finite and > 0."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise TemperatureError(f"{where} must be a number above 0, got {value!r}; re-export or re-fit it") from None
    if not math.isfinite(t) or t <= 0:
        raise TemperatureError(f"{where} must be a finite number above 0, got {value!r}; re-export or re-fit it")
    return t


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
    """ECE (15 bins), NLL and Brier of softmax(logits / T), as fractions (ECE 0.012 = 1.2 %)."""
    p = softmax(logits, temperature)
    return {"ece": ece(p, labels), "nll": nll(logits, labels, temperature), "brier": brier(p, labels)}


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


def cross_fit(logits: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Temperature fitted on one stratified half, scored on the other, both ways.

    For weights trained on every training image the test set is the only held-out data; this way
    no reported figure is measured on the images its temperature was fitted on. The published T is
    the one fitted on all of them (the best estimate); the calibrated scores are the mean over the
    two held-out halves.
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    a, b = stratified_halves(labels, seed)
    halves = []
    for fit_on, score_on in ((a, b), (b, a)):
        t = fit_temperature(logits[fit_on], labels[fit_on])
        halves.append({"temperature": t, **scores(logits[score_on], labels[score_on], t)})
    out: dict[str, Any] = {f"{k}_calibrated": float(np.mean([h[k] for h in halves])) for k in ("ece", "nll", "brier")}
    out.update(scores(logits, labels))
    out["temperature"] = fit_temperature(logits, labels)
    out["halves"] = halves
    out["fitted_on"] = "cross-fitted on two stratified halves of the test set"
    return out


def report(logits: np.ndarray, labels: np.ndarray, temperature: float | None,
           fitted_on: str = "") -> dict[str, Any]:
    """``ece``/``nll``/``brier`` raw, and ``*_calibrated`` with ``temperature`` (None: uncalibrated only)."""
    out: dict[str, Any] = scores(logits, labels)
    if temperature is not None:
        t = check_temperature(temperature)
        out.update({f"{k}_calibrated": v for k, v in scores(logits, labels, t).items()})
        out["temperature"] = t
        out["temperature_fitted_on"] = fitted_on
    return out
