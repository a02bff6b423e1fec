"""How low can the calibrator family take the published models' ECE? Prints, never asserts.

For each model, on every CIFAR-10 test image (plain logits, as `aperture predict` and the ONNX
file use them; ``--tta`` for the flip-averaged ones): the cross-fitted ECE of one temperature and
of the calibrator ``fit_calibrator`` chooses (what the cards report), and two floors measured in
hindsight on all 10,000 images at once (chosen on the images they are scored on, so no held-out
figure can be lower):

- one temperature: the lowest ECE any temperature on a grid of 400 values over 0.3-1.5 gives;
- the family: for every kind, the lowest ECE a derivative-free search finds over its parameters,
  started from its NLL fit on all images (a random local search with shrinking steps: the lowest
  found, so an upper bound of the true floor).

Also the ECE a perfectly calibrated model would show on the same images (labels drawn from the
calibrator's own probabilities, 50 draws): the estimator's own floor on 5,000-image halves; and
with ``--seeds N`` the cross-fitted ECE of one temperature and of the calibrator on N different
pairs of stratified halves (seed 0 is the one the cards report), to show how much of a figure is
the split.
Logits come from ``logit_cache.py`` (computed once by the library's ``evaluate_sums``).

    python bench/calibration_limit.py --data-dir DIR_WITH_CIFAR10 [--models resnet10,resnet22] [--tta]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from logit_cache import logits as cached_logits


def family_floor(z: np.ndarray, y: np.ndarray, kind: str, steps: int = 400, seed: int = 0) -> float:
    """The lowest 15-bin ECE found for ``kind`` on these very images (in hindsight)."""
    from aperture_zoo.calibration import ece
    from aperture_zoo.calibrator_fit import _Problem, newton
    from aperture_zoo.calibrators import CalibratorError

    problem = _Problem(kind, z, y)
    theta = newton(problem.value_and_grad, problem.start())

    def score(t: np.ndarray) -> float:
        try:
            return ece(problem.calibrator(t, "").apply(z), y)
        except CalibratorError:
            return np.inf

    rng = np.random.default_rng(seed)
    best, scale = score(theta), 0.3
    for i in range(steps):
        trial = theta + rng.normal(scale=scale, size=theta.shape)
        got = score(trial)
        if got < best:
            theta, best = trial, got
        if i % 50 == 49:
            scale *= 0.6
    return best


def noise_floor(probs: np.ndarray, draws: int = 50, seed: int = 0) -> float:
    """Mean ECE of these probabilities on labels drawn from themselves, on half the images."""
    from aperture_zoo.calibration import ece

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        idx = rng.choice(len(probs), len(probs) // 2, replace=False)
        p = probs[idx]
        out.append(ece(p, (p.cumsum(1) < rng.random((len(p), 1))).sum(1)))
    return float(np.mean(out))


def main() -> None:
    from aperture_zoo.calibration import cross_fit, ece, fit_calibrator, softmax
    from aperture_zoo.calibrators import KINDS
    from aperture_zoo.registry import list_models

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder containing cifar-10-batches-py/")
    p.add_argument("--models", default=",".join(list_models()))
    p.add_argument("--tta", action="store_true", help="the flip-averaged logits")
    p.add_argument("--seeds", type=int, default=1, help="pairs of stratified halves to cross-fit on (default 1)")
    args = p.parse_args()
    grid = np.exp(np.linspace(np.log(0.3), np.log(1.5), 400))
    for name in args.models.split(","):
        clean = cached_logits(name, args.data_dir, "clean")
        y = clean["labels"]
        z = clean["plain"].astype(np.float64)
        if args.tta:
            z = 0.5 * (z + clean["mirrored"])
        held = cross_fit(z, y)
        splits = [held] + [cross_fit(z, y, seed=s) for s in range(1, args.seeds)]
        in_sample = [ece(softmax(z, t), y) for t in grid]
        floors = {kind: round(100 * family_floor(z, y, kind), 2) for kind in KINDS}
        print(json.dumps({
            "model": name, "logits": "flip-averaged" if args.tta else "plain", "images": len(y),
            "ece_uncalibrated": round(100 * held["raw"]["ece"], 2),
            "ece_temperature": round(100 * held["temperature"]["ece"], 2),
            "ece_calibrator": round(100 * held["calibrator"]["ece"], 2),
            "ece_floor_any_temperature": round(100 * float(min(in_sample)), 2),
            "ece_floor_family": min(floors.values()), "ece_floor_by_kind": floors,
            "ece_of_a_perfectly_calibrated_model_on_halves": round(100 * noise_floor(fit_calibrator(z, y).apply(z)), 2),
            "split_seeds": list(range(args.seeds)),
            "ece_temperature_by_split": [round(100 * h["temperature"]["ece"], 2) for h in splits],
            "ece_calibrator_by_split": [round(100 * h["calibrator"]["ece"], 2) for h in splits],
        }), flush=True)


if __name__ == "__main__":
    main()
