"""Calibrators that keep every prediction: one record, one ``apply(logits) -> probabilities``.

Every member of the family maps each logit's gap to the image's top logit through an increasing
function, divides by a positive (maybe image-dependent) temperature and takes the softmax, so the
top class keeps the top probability and no two classes swap places:

    d_k = max(z) - z_k >= 0        s_k = -g(d_k) / T(x)        p = softmax(s)
    g(d) = d  |  d ** power  |  a monotone piecewise-linear spline (positive slopes)
    T(x) = temperature * exp(sum_i weight_i * feature_i(z)),  clipped to [0.01, 100]

- ``temperature``: g(d) = d and one number (Guo et al. 2017), so p = softmax(z / T).
- ``power``, ``spline``: g bends the gaps too, so the runner-up and the far classes are sharpened by
  different amounts: what a label-smoothed network's logits need (its confident images all sit at
  the same margin, Müller et al. 2019).
- ``adaptive``, ``adaptive-power``, ``adaptive-spline``: the temperature depends on the image's own
  logits (the log top-2 margin and the softmax entropy): parameterised temperature scaling (Tomani
  et al. 2022), adaptive temperature scaling (Balanya et al. 2024).

Every kind is fitted by NLL in ``calibration`` (``fit_kind``; ``fit_calibrator`` chooses the kind).
The record imports nothing heavy (``aperture list`` and ``--help`` stay light: numpy is imported
when a map is applied); the map is numpy only, so the torch-free ONNX path shares it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .errors import ApertureError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

KINDS: tuple[str, ...] = ("temperature", "power", "spline", "adaptive", "adaptive-power", "adaptive-spline")
FEATURES: tuple[str, ...] = ("log_margin", "entropy")
T_RANGE = (0.01, 100.0)        # T(x) is clipped here; a stored temperature must lie inside
POWER_RANGE = (0.25, 4.0)
SLOPE_RANGE = (1e-3, 1e3)      # of a spline's pieces: strictly increasing, never a jump
MAX_KNOTS = 16
MAX_WEIGHT = 100.0
# where the published weights' calibrators are fitted (they saw every training image)
CROSS_FITTED = "cross-fitted on two stratified halves of the test set"
RECORD_KEYS = ("kind", "temperature", "power", "weights", "knots", "slopes", "fitted_on", "classes")
MAX_CLASSES = 100_000
MARGIN_FLOOR = 1e-6            # log_margin of tied top logits: log(1e-6) instead of -inf
MAX_LOGIT = 3.4028234663852886e38   # float32's largest


class CalibratorError(ApertureError, ValueError):
    """A calibrator record, or logits given to one, that cannot give trustworthy probabilities."""


class TemperatureError(CalibratorError):
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


def temperature_argument(value: Any, where: str = "temperature") -> float:
    """A temperature a caller passes: a real number (a file's text "1.5" is read by ``check_temperature``), never
    a bool or a string, which ``float()`` would take silently (True is T = 1, '2' is T = 2)."""
    if isinstance(value, (bool, str, bytes)) or type(value).__name__ == "bool_":
        raise TemperatureError(f"{where} must be a real number above 0 (e.g. {where}=1.5), got {value!r}")
    t = check_temperature(value, where)
    if not T_RANGE[0] <= t <= T_RANGE[1]:  # the caller's own number: say so, not "re-fit" as for a file's
        raise TemperatureError(f"{where} must lie within [{T_RANGE[0]:g}, {T_RANGE[1]:g}] (beyond, every answer is "
                               f"one-hot or uniform), got {value!r}; pass e.g. {where}=1.5")
    return t


def check_logits(logits: Any) -> np.ndarray:
    """N x K float64 logits (K >= 2), or a one-line error for non-finite or out-of-float32-range values."""
    import numpy as np

    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1:
        z = z[None, :]
    if z.ndim != 2 or z.shape[1] < 2:
        raise CalibratorError(f"logits must be N x classes with at least 2 classes, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise CalibratorError("the logits contain NaN or infinity: the model's weights are damaged or its "
                              "input is; check both before trusting any probability")
    if z.size and np.abs(z).max() > MAX_LOGIT:
        raise CalibratorError(f"logits beyond float32 range ({np.abs(z).max():.3g}) are not a network's "
                              "output; pass the model's logits")
    return z


def features(z: np.ndarray) -> dict[str, np.ndarray]:
    """The per-image features an adaptive temperature depends on (``z`` from ``check_logits``)."""
    import numpy as np

    top2 = np.partition(z, -2, axis=1)[:, -2:]
    s = z - top2[:, 1:]
    log_norm = np.log(np.exp(s).sum(axis=1, keepdims=True))
    p = np.exp(s - log_norm)
    return {"log_margin": np.log(np.maximum(top2[:, 1] - top2[:, 0], MARGIN_FLOOR)),
            "entropy": -(p * (s - log_norm)).sum(axis=1)}


@dataclass(frozen=True)
class Calibrator:
    """A fitted calibrator: what it is (``kind``) and its few numbers; ``apply`` is the only map."""

    kind: str = "temperature"
    temperature: float = 1.0
    power: float = 1.0
    weights: tuple[tuple[str, float], ...] = ()   # (feature, weight) of the adaptive kinds
    fitted_on: str = ""                           # where the parameters were fitted, said by cards
    knots: tuple[float, ...] = ()                 # spline kinds: where the slope changes (ascending, > 0)
    slopes: tuple[float, ...] = ()                # spline kinds: one per piece, len(knots) + 1
    classes: int = field(default=0, compare=False)  # the head it belongs to (0: unknown); set when fitted or attached

    def __post_init__(self) -> None:
        where = f"the {self.kind!r} calibrator"
        if self.kind not in KINDS:
            raise CalibratorError(f"unknown calibrator kind {self.kind!r}; known: {', '.join(KINDS)}; re-fit it")
        t = check_temperature(_number(self.temperature, f"the temperature of {where}"), f"the temperature of {where}")
        if not T_RANGE[0] <= t <= T_RANGE[1]:
            raise CalibratorError(f"the temperature of {where} is {t:g}, outside {T_RANGE}; re-fit it")
        power = _number(self.power, f"the power of {where}")
        if not POWER_RANGE[0] <= power <= POWER_RANGE[1] or ("power" not in self.kind and power != 1.0):
            raise CalibratorError(f"{where} has power {power:g}; it must be 1 for kind {self.kind!r} and within "
                                  f"{POWER_RANGE} otherwise; re-fit it")
        names = [n for n, _ in self.weights]
        if self.kind.startswith("adaptive") != bool(self.weights) or len(set(names)) != len(names) \
                or not set(names) <= set(FEATURES):
            raise CalibratorError(f"{where} has feature weights for {names}; adaptive kinds need some of "
                                  f"{', '.join(FEATURES)} (each once), the others none; re-fit it")
        for name, w in self.weights:
            if abs(_number(w, f"the weight of {name!r} in {where}")) > MAX_WEIGHT:
                raise CalibratorError(f"the weight of {name!r} in {where} is {w}, beyond ±{MAX_WEIGHT:g}; re-fit it")
        knots = tuple(_number(k, f"a knot of {where}") for k in self.knots)
        slopes = tuple(_number(v, f"a slope of {where}") for v in self.slopes)
        if self.kind.endswith("spline") != bool(knots) or len(slopes) != len(knots) + (1 if knots else 0) \
                or len(knots) > MAX_KNOTS or any(b <= a for a, b in zip((0.0, *knots), knots)) \
                or (knots and knots[-1] > MAX_LOGIT) or not all(SLOPE_RANGE[0] <= v <= SLOPE_RANGE[1] for v in slopes):
            raise CalibratorError(f"{where} has knots {list(knots)[:4]} and slopes {list(slopes)[:4]}; spline kinds need "
                                  f"1-{MAX_KNOTS} ascending knots above 0 and one slope in {SLOPE_RANGE} per piece, "
                                  "the others none; re-fit it")
        if isinstance(self.classes, bool) or not isinstance(self.classes, int) or not 0 <= self.classes <= MAX_CLASSES:
            raise CalibratorError(f"{where} records {self.classes!r} classes; it must be a whole number in "
                                  f"0..{MAX_CLASSES}; re-fit it")
        object.__setattr__(self, "temperature", t)
        object.__setattr__(self, "power", power)
        object.__setattr__(self, "weights", tuple((n, float(w)) for n, w in self.weights))
        object.__setattr__(self, "knots", knots)
        object.__setattr__(self, "slopes", slopes)

    def gaps(self, d: np.ndarray) -> np.ndarray:
        """g(d): the increasing map of the gaps to the top logit (g(0) = 0)."""
        import numpy as np

        if self.knots:
            edges = (0.0, *self.knots)
            out = np.zeros_like(d)
            for i, (lo, slope) in enumerate(zip(edges, self.slopes)):
                hi = edges[i + 1] - lo if i + 1 < len(edges) else np.inf
                out = out + slope * np.clip(d - lo, 0.0, hi)
            return out
        return d if self.power == 1.0 else d ** self.power

    def temperatures(self, logits: Any) -> np.ndarray:
        """T(x) per image (all equal for ``temperature`` and ``power``)."""
        import numpy as np

        z = self._logits(logits)
        log_t = np.full(len(z), math.log(self.temperature))
        if self.weights:
            f = features(z)
            for name, w in self.weights:
                log_t = log_t + w * f[name]
        return np.exp(np.clip(log_t, math.log(T_RANGE[0]), math.log(T_RANGE[1])))

    def apply(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities, N x K float64; the top logit's class keeps the top probability."""
        import numpy as np

        z = self._logits(logits)
        e = np.exp(-self.gaps(z.max(axis=1, keepdims=True) - z) / self.temperatures(z)[:, None])  # top: exp(0) = 1
        return e / e.sum(axis=1, keepdims=True)

    def _logits(self, logits: Any) -> np.ndarray:
        """Checked logits of the head this calibrator was fitted for: its features and spline knots are
        those of that many classes, so on another head it would answer plausible, wrong probabilities."""
        z = check_logits(logits)
        if self.classes and z.shape[1] != self.classes:
            raise CalibratorError(f"this calibrator was fitted on {self.classes}-class logits, not {z.shape[1]}-class "
                                  "ones: it belongs to another head; fit one on this model's held-out logits "
                                  "(aperture_zoo.calibration.fit_calibrator)")
        return z

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "temperature": self.temperature}
        if "power" in self.kind:
            out["power"] = self.power
        if self.weights:
            out["weights"] = dict(self.weights)
        if self.knots:
            out["knots"], out["slopes"] = list(self.knots), list(self.slopes)
        if self.fitted_on:
            out["fitted_on"] = self.fitted_on
        if self.classes:  # the head binding survives a round trip through JSON (from_dict reads it)
            out["classes"] = self.classes
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "the calibrator") -> Calibrator:
        """A record from JSON-like data (weights metadata, ONNX metadata, catalog), checked."""
        if not isinstance(data, Mapping) or not set(data) <= set(RECORD_KEYS):
            raise CalibratorError(f"{where} is not a calibrator record ({', '.join(RECORD_KEYS)}): "
                                  f"{str(data)[:120]!r}; re-export or re-fit it")
        weights, fitted_on = data.get("weights", {}), data.get("fitted_on", "")
        knots, slopes = data.get("knots", []), data.get("slopes", [])
        if not isinstance(weights, Mapping) or not isinstance(fitted_on, str) or len(fitted_on) > 200 \
                or not isinstance(knots, list) or not isinstance(slopes, list) or not isinstance(data.get("kind", ""), str):
            raise CalibratorError(f"{where} has a malformed kind, weights, knots, slopes or fitted_on; re-export or re-fit it")
        try:
            return cls(data.get("kind", "temperature"), data.get("temperature", 1.0), data.get("power", 1.0),
                       tuple((str(k), v) for k, v in weights.items()), fitted_on, tuple(knots), tuple(slopes),
                       data.get("classes", 0))
        except CalibratorError as exc:
            raise CalibratorError(f"{where}: {exc}") from None

    def rounded(self, digits: int = 8) -> Calibrator:
        """The same calibrator with its numbers to ``digits`` significant digits (what records and files
        carry: the map moves by ~1e-8, far below any figure)."""
        r = lambda x: float(f"{x:.{digits}g}")  # noqa: E731
        return Calibrator(self.kind, r(self.temperature), r(self.power), tuple((n, r(w)) for n, w in self.weights),
                          self.fitted_on, tuple(map(r, self.knots)), tuple(map(r, self.slopes)), self.classes)

    def for_head(self, classes: int) -> Calibrator:
        """This calibrator bound to a head of ``classes`` (a model's own, as it is attached): handed to a
        model with another head, it is refused instead of answering plausible, wrong probabilities."""
        return replace(self, classes=int(classes))

    def describe(self) -> str:
        """One line for cards, ``aperture list``/``predict`` and the page."""
        if self.kind == "temperature":
            return f"temperature {self.temperature:.4g}"
        parts = [f"{self.kind}: T {self.temperature:.4g}"]
        if "power" in self.kind:
            parts.append(f"power {self.power:.4g}")
        if self.knots:
            parts.append(f"{len(self.slopes)}-piece spline")
        parts += [f"{n} {w:+.3g}" for n, w in self.weights]
        return ", ".join(parts)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise CalibratorError(f"{where} must be a number, got {value!r}; re-fit it")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise CalibratorError(f"{where} must be a number, got {value!r}; re-fit it") from None
    if not math.isfinite(x):
        raise CalibratorError(f"{where} must be finite, got {value!r}; re-fit it")
    return x


def from_metadata(meta: Mapping[str, Any], where: str) -> Calibrator | None:
    """The calibrator a file's metadata records (weights or ONNX, values JSON text or decoded):
    ``calibrator``, else an older file's ``temperature`` as the one-temperature kind, else None.
    A bad record is refused with a one-line error naming ``where``."""
    import json

    temperature = check_temperature(meta["temperature"], f"the temperature in {where}") if "temperature" in meta else None
    if "calibrator" in meta:
        value = meta["calibrator"]
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise CalibratorError(f"the calibrator in {where} is not JSON; re-export or re-fit it") from None
        return Calibrator.from_dict(value, f"the calibrator in {where}")
    return None if temperature is None else Calibrator("temperature", temperature)
