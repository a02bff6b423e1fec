"""Calibration of a run and the calibration figures of an evaluation, from logits.

A run with a held-out split fits its calibrators there (``fit_val_calibration``: the same
``calibration.fit_calibrator`` as the published weights, once for the plain logits and once for the
flip-averaged ones). ``logit_figures`` turns an evaluation's logits into eval.json's calibration
block: uncalibrated, one temperature and the calibrator, for the plain and the flip-averaged
outputs, never scored on the images they were fitted on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

VAL_FITTED = "validation split"  # calibrator_fitted_on / temperature_fitted_on of a run trained with --val-split
from aperture_zoo.calibrators import CROSS_FITTED  # noqa: E402  (re-exported: eval.json's fitted_on)


def fit_val_calibration(plain: np.ndarray, mirrored: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The run's calibrators and one-temperature fit, by NLL on its validation split's logits (of the
    images and their mirrors, ``evaluate.split_logits``): metadata for model.safetensors
    (``calibrator`` for plain outputs, ``calibrator_tta`` for flip-averaged ones). A split with too few
    wrong answers gets none: ``calibration_not_fitted`` says why (the run prints it)."""
    from aperture_zoo.calibration import fit_calibrator, fit_temperature, unfit_reason

    plain = np.asarray(plain, dtype=np.float64)
    averaged = 0.5 * (plain + np.asarray(mirrored, dtype=np.float64))
    y = np.asarray(labels)
    reason = unfit_reason(plain, y) or unfit_reason(averaged, y)
    if reason is not None:
        return {"calibration_not_fitted": f"no calibrator fitted on the validation split: {reason}"}
    return {"temperature": round(fit_temperature(plain, y), 6), "temperature_fitted_on": VAL_FITTED,
            "calibrator": fit_calibrator(plain, y, VAL_FITTED).rounded().to_dict(),
            "calibrator_tta": fit_calibrator(averaged, y, VAL_FITTED).rounded().to_dict()}


def _flat(fig: dict[str, Any]) -> dict[str, Any]:
    """``calibration.cross_fit``/``report`` figures as eval.json keys: raw, ``*_calibrated`` (the
    calibrator) and ``temperature_scaling`` (one temperature, for comparison)."""
    out: dict[str, Any] = dict(fig["raw"])
    if "calibrator" in fig:
        out.update({f"{k}_calibrated": v for k, v in fig["calibrator"].items() if k != "halves"})
        if "halves" in fig["calibrator"]:
            out["calibrator_halves"] = fig["calibrator"]["halves"]
    if "temperature" in fig:
        out["temperature_scaling"] = dict(fig["temperature"])
    return out


def _figures(logits: np.ndarray, labels: np.ndarray, own: Any, temperature: float | None,
             shifted: dict[str, tuple[np.ndarray, np.ndarray | None]] | None = None) -> dict[str, Any]:
    """Figures for one output: with the model's own calibrator if fitted on a validation split, else
    cross-fitted on the test images (and the calibrator fitted on all of them, to publish).
    ``shifted``: corrupted copies' logits (name -> (logits, their rows' indices into ``logits``)),
    scored with the calibrators fitted on the clean images."""
    from aperture_zoo.calibration import (MIN_HALF, can_cross_fit, cross_fit, fit_calibrator, fit_temperature, report,
                                          unfit_reason)

    if own is not None and own.fitted_on == VAL_FITTED:
        fig = report(logits, labels, own, temperature)
        fig["others"] = {name: report(x, labels[np.arange(len(labels)) if pos is None else pos], own, temperature)
                         for name, (x, pos) in (shifted or {}).items()}
        out = _flat(fig)
        out.update(calibrator=own.to_dict(), calibrator_fitted_on=VAL_FITTED)
        if "temperature_scaling" in out:
            out["temperature_scaling"]["temperature"] = temperature
            out.update(temperature=temperature, temperature_fitted_on=VAL_FITTED)
    elif can_cross_fit(labels) and unfit_reason(logits, labels) is None:
        fig = cross_fit(logits, labels, others=shifted)
        out = _flat(fig)
        out.update(calibrator=fit_calibrator(logits, labels, CROSS_FITTED).rounded().to_dict(),
                   calibrator_fitted_on=CROSS_FITTED)
        # the one temperature fitted on all the images (eval.json's key since before calibrators)
        out["temperature"] = out["temperature_scaling"]["temperature"] = fit_temperature(logits, labels)
        out["temperature_fitted_on"] = CROSS_FITTED
    else:  # a calibrator fitted on a handful, or on a set with (almost) no errors, is noise
        fig = report(logits, labels, None)
        out = _flat(fig)
        out["calibrator_fitted_on"] = out["temperature_fitted_on"] = f"not fitted: {unfit_reason(logits, labels)}" if can_cross_fit(
            labels) else f"not fitted: too few images to cross-fit a calibrator (each half needs at least {MIN_HALF})"
    out["reliability"] = fig["reliability"]
    if fig.get("others"):
        out["calibration_under_shift"] = {
            "fitted_on": f"clean test images ({out['calibrator_fitted_on']})",
            "conditions": {name: {"num_images": int(len(shifted[name][0])),  # type: ignore[index]
                                  **{k: v for k, v in f.items() if k in ("raw", "temperature", "calibrator")}}
                           for name, f in fig["others"].items()}}
    return out


def logit_figures(plain: Any, mirrored: Any, labels: Any, model: nn.Module, tta: bool | None = None,
                  shifted: dict[str, tuple[np.ndarray, np.ndarray | None]] | None = None) -> dict[str, Any]:
    """Calibration (and, with mirrored logits, top-1 with and without flip TTA) from logits.

    The main figures are measured on the logits the reported top-1 comes from (flip-averaged with
    ``tta``, which defaults to "mirrored logits were given"). Mirrored logits without ``tta`` add
    ``tta_calibration``: the same figures for the flip-averaged logits, with calibrators fitted on
    flip-averaged logits (what the ``--tta flip`` ONNX file carries). A calibrator fitted on a run's
    validation split is applied as it is; otherwise (the published weights, or none known) it is
    cross-fitted on two stratified halves of these images, so no figure is measured on the images
    it was fitted on. ``shifted`` adds ``calibration_under_shift``: corrupted copies of these images
    (``{"contrast:5": (logits, rows)}``, rows indexing ``labels``, None for all) scored with the
    calibrators fitted on the clean ones, for the output the main figures are of.
    """
    labels = np.asarray(labels)
    if tta and mirrored is None:
        raise ValueError("tta=True needs the mirrored logits")
    tta = mirrored is not None if tta is None else tta
    plain = np.asarray(plain, dtype=np.float64)
    averaged = None if mirrored is None else 0.5 * (plain + np.asarray(mirrored, dtype=np.float64))
    own, own_tta = getattr(model, "calibrator", None), getattr(model, "calibrator_tta", None)
    temperature = getattr(model, "temperature", None)
    logits = averaged if tta else plain
    out = _figures(logits, labels, (own_tta or own) if tta else own, temperature, shifted)
    out.update(ece_bins=15, calibration_num_images=int(len(labels)))
    if averaged is not None:
        out["top1_by_tta"] = {"none": 100.0 * float((plain.argmax(1) == labels).mean()),
                              "flip": 100.0 * float((averaged.argmax(1) == labels).mean())}
        if not tta:
            out["tta_calibration"] = _figures(averaged, labels, own_tta or own, temperature)
            del out["tta_calibration"]["reliability"]
    return out


def calibration_lines(e: dict[str, Any]) -> list[str]:
    """The calibration figures of an evaluation as printed lines (eval.json before calibrators too)."""
    def trio(d: dict[str, Any], suffix: str = "") -> str:
        return f"{100 * d['ece' + suffix]:.2f}% / {d['nll' + suffix]:.4f} / {d['brier' + suffix]:.4f}"

    head = "calibration (15-bin ECE / NLL / Brier): "
    if "ece" not in e:
        return []
    if "ece_calibrated" not in e:
        return [head + trio(e) + f"; no calibrator: {e.get('calibrator_fitted_on', e.get('temperature_fitted_on'))}"]
    if "calibrator" not in e:  # an eval.json from before calibrators: one temperature
        return [head + trio(e) + f" -> with temperature {e['temperature']:.4f}: {trio(e, '_calibrated')} "
                f"(temperature {e['temperature_fitted_on']})"]
    from aperture_zoo.calibrators import Calibrator

    lines = [head + trio(e) + f" -> with the calibrator: {trio(e, '_calibrated')} ({e['calibrator_fitted_on']})",
             f"  calibrator: {Calibrator.from_dict(e['calibrator']).describe()}"]
    t = e.get("temperature_scaling")
    if t:
        lines.append(f"  one temperature ({t['temperature']:.4f}), for comparison: {trio(t)}")
    return lines
