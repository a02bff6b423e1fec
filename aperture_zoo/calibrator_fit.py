"""Fitting one kind of calibrator by NLL: a damped Newton method on its few parameters.

numpy has no optimiser and the torch-free ONNX path must not need scipy or torch, so this module
keeps its own: Levenberg-Marquardt-damped Newton steps on a Hessian taken by central differences
of the analytic gradient, each step accepted only if it lowers the NLL (robust on the non-convex
corners of these objectives, quadratic convergence near the optimum). Parameters, all unbounded:
log T, the feature weights (on standardised features), log power, log(slope - min slope). Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .calibrators import FEATURES, KINDS, POWER_RANGE, SLOPE_RANGE, T_RANGE, Calibrator, CalibratorError
from .calibrators import check_logits, features

# Spline knots: quantiles of the top-2 margin on the fitting images, so they follow any model's
# logit scale (a label-smoothed network's confident images crowd near one margin: knots gather there).
KNOT_QUANTILES = (0.1, 0.3, 0.5)
_LOG_T = (math.log(T_RANGE[0]), math.log(T_RANGE[1]))


def newton(fun: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: Any, max_iter: int = 200,
           gtol: float = 1e-8, ftol: float = 1e-9) -> np.ndarray:
    """The minimiser of a smooth ``fun(x) -> (value, gradient)`` of a few variables, from ``x0``:
    stops when the gradient is below ``gtol`` or a step gains less than ``ftol`` (a parameter
    heading for a bound, such as a slope to its floor, would otherwise crawl)."""
    x = np.asarray(x0, dtype=np.float64).copy()
    f, g = fun(x)
    lam = 1e-6
    for _ in range(max_iter):
        if np.abs(g).max() < gtol:
            break
        h = _hessian(fun, x)
        while True:
            damped = h + lam * np.eye(len(x))
            try:
                np.linalg.cholesky(damped)  # positive definite: the step goes downhill
                step = np.linalg.solve(damped, -g)
                f_new, g_new = fun(x + step)
            except np.linalg.LinAlgError:
                f_new = math.inf
            if np.isfinite(f_new) and f_new <= f:
                break
            lam *= 10.0
            if lam > 1e12:
                return x
        stalled = f - f_new <= ftol * max(1.0, abs(f))
        x, f, g, lam = x + step, f_new, g_new, max(lam / 10.0, 1e-9)
        if stalled:
            break
    return x


def _hessian(fun: Callable[[np.ndarray], tuple[float, np.ndarray]], x: np.ndarray) -> np.ndarray:
    n = len(x)
    h = np.empty((n, n))
    for i in range(n):
        e = np.zeros(n)
        e[i] = 1e-5 * max(1.0, abs(x[i]))
        h[i] = (fun(x + e)[1] - fun(x - e)[1]) / (2 * e[i])
    return 0.5 * (h + h.T)


class _Problem:
    """The NLL of one kind on fixed logits and labels, as a function of its unbounded parameters."""

    def __init__(self, kind: str, z: np.ndarray, y: np.ndarray) -> None:
        self.kind, self.y, self.rows = kind, y, np.arange(len(y))
        self.d = z.max(axis=1, keepdims=True) - z
        self.names = list(FEATURES) if kind.startswith("adaptive") else []
        raw = np.stack([features(z)[n] for n in self.names], axis=1) if self.names else np.zeros((len(z), 0))
        self.center, scale = raw.mean(axis=0), raw.std(axis=0)
        self.scale = np.where(scale > 1e-12, scale, 1.0)
        self.phi = (raw - self.center) / self.scale   # standardised: a well-conditioned problem
        self.free_t = not kind.endswith("spline")     # a spline's slopes carry the scale
        self.free_power = kind.endswith("power")
        self.knots: tuple[float, ...] = ()
        self.basis: list[np.ndarray] = []
        if kind.endswith("spline"):
            margin = np.sort(self.d, axis=1)[:, 1]
            knots = np.unique(np.quantile(margin, KNOT_QUANTILES))
            self.knots = tuple(float(k) for k in knots if k > 1e-6)
            edges = (0.0, *self.knots)
            for i, lo in enumerate(edges):
                hi = edges[i + 1] - lo if i + 1 < len(edges) else np.inf
                self.basis.append(np.clip(self.d - lo, 0.0, hi))
        self.size = int(self.free_t) + len(self.names) + int(self.free_power) + len(self.basis)

    def start(self) -> np.ndarray:
        theta = np.zeros(self.size)
        if self.basis:  # slopes of 1: the plain softmax
            theta[-len(self.basis):] = math.log(1.0 - SLOPE_RANGE[0])
        return theta

    def value_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        i = int(self.free_t)
        w = theta[i:i + len(self.names)]
        log_t = (theta[0] if self.free_t else 0.0) + self.phi @ w
        inside = (log_t > _LOG_T[0]) & (log_t < _LOG_T[1])
        u = np.exp(-np.clip(log_t, *_LOG_T))           # 1 / T(x)
        derivs: list[np.ndarray] = []                  # d q / d (shape parameter)
        if self.basis:
            slopes = SLOPE_RANGE[0] + np.exp(np.minimum(theta[-len(self.basis):], 50.0))
            if slopes.max() > SLOPE_RANGE[1]:  # a trial step out of range: refused
                return math.inf, np.zeros_like(theta)
            q = sum(s * b for s, b in zip(slopes, self.basis))
            derivs = [(s - SLOPE_RANGE[0]) * b for s, b in zip(slopes, self.basis)]
        elif self.free_power:
            power = math.exp(theta[-1])
            if not POWER_RANGE[0] <= power <= POWER_RANGE[1]:  # a trial step out of range: refused
                return math.inf, np.zeros_like(theta)
            q = self.d ** power
            derivs = [power * q * np.log(np.where(self.d > 0, self.d, 1.0))]
        else:
            q = self.d
        s = -u[:, None] * q
        log_z = np.log(np.exp(s).sum(axis=1))          # max(s) = 0: no overflow
        p = np.exp(s - log_z[:, None])
        value = float(np.mean(log_z - s[self.rows, self.y]))
        g_log_t = -(q[self.rows, self.y] - (p * q).sum(axis=1)) * u * inside
        grad = ([g_log_t.mean()] if self.free_t else []) + [float((g_log_t * self.phi[:, j]).mean())
                                                            for j in range(len(self.names))]
        grad += [float((u * (dq[self.rows, self.y] - (p * dq).sum(axis=1))).mean()) for dq in derivs]
        return value, np.asarray(grad, dtype=np.float64)

    def calibrator(self, theta: np.ndarray, fitted_on: str) -> Calibrator:
        """The record, with the standardisation folded into the temperature and the raw-feature weights."""
        i = int(self.free_t)
        w = theta[i:i + len(self.names)] / self.scale
        log_t = (theta[0] if self.free_t else 0.0) - float((w * self.center).sum())
        power = float(np.clip(np.exp(min(theta[-1], 50.0)), *POWER_RANGE)) if self.free_power else 1.0
        slopes = tuple(float(np.clip(SLOPE_RANGE[0] + np.exp(min(v, 50.0)), *SLOPE_RANGE))
                       for v in theta[len(theta) - len(self.basis):]) if self.basis else ()
        # a temperature or weight that ran off (every image at the clip, the NLL flat) is refused by the
        # record's own checks: the kind is then not chosen
        return Calibrator(self.kind, float(np.clip(np.exp(np.clip(log_t, *_LOG_T)), *T_RANGE)), power,
                          tuple(zip(self.names, map(float, w))), fitted_on, self.knots, slopes, self.d.shape[1])


def fit_kind(kind: str, logits: Any, labels: Any, fitted_on: str = "") -> Calibrator:
    """The ``kind`` calibrator with the lowest NLL on these logits and labels."""
    if kind not in KINDS:
        raise CalibratorError(f"unknown calibrator kind {kind!r}; known: {', '.join(KINDS)}")
    z = check_logits(logits)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(z) == 0 or len(y) != len(z):
        raise CalibratorError(f"a calibrator needs labelled logits to be fitted on, got {len(z)} logits and "
                              f"{len(y)} labels")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise CalibratorError(f"labels must be class indices 0..{z.shape[1] - 1}")
    problem = _Problem(kind, z, y)
    if kind.endswith("spline") and not problem.knots:
        raise CalibratorError("a spline needs top-2 margins above 0 to place its knots")
    return problem.calibrator(newton(problem.value_and_grad, problem.start()), fitted_on)
