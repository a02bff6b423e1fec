"""The calibration part of a model card: the figures of an eval.json written with calibrators.

Uncalibrated, one temperature and the calibrator, for the plain and the flip-TTA outputs, and the
ECE under the five corruptions with the calibrator fitted on clean images. (Older eval.json files,
with one temperature, are shown by ``cards`` as before.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def calibration_context(ev: dict[str, Any], n: str, escape: Callable[[object], str],
                        carried: bool = True) -> dict[str, Any]:
    """The card's calibration table (uncalibrated, one temperature, the calibrator; plain and flip
    TTA) and the calibration-under-shift table, from an eval.json written with calibrators; ``escape``
    shows the file's own text (corruption names, where it was fitted) literally in Markdown.

    ``carried``: the weights carry a calibrator. Without one, predict gives the softmax row, and the
    calibrator eval fitted is labelled as not in the weights: the card never claims it is applied."""
    from .calibrators import Calibrator

    def rows(fig: dict[str, Any], output: str) -> list[tuple[str, ...]]:
        t = fig.get("temperature_scaling") or {}
        cal = Calibrator.from_dict(fig["calibrator"]).describe() if fig.get("calibrator") else None
        out = [(output, "softmax(logits)" if carried else "**softmax(logits)**: what these weights give",
                *_scores(fig, ""))]
        if t:
            out.append((output, f"one temperature ({t['temperature']:.4f})", *_scores(t, "")))
        if cal and "ece_calibrated" in fig:
            out.append((output, f"**calibrator** ({cal})" if carried else f"calibrator fitted by eval, not in these "
                        f"weights ({cal})", *_scores(fig, "_calibrated")))
        return out

    lines = rows(ev, "flip TTA" if ev.get("tta") else "plain")
    if ev.get("tta_calibration"):
        lines += rows(ev["tta_calibration"], "flip TTA")
    shift = ev.get("calibration_under_shift")
    shift_table = table(("corruption", "severity", "images", "ECE uncalibrated %", "one temperature %", "calibrator %"), [
        (escape(name.split(":")[0]), escape(name.split(":")[-1]), f"{s['num_images']:,}", *(f"{100 * s[k]['ece']:.2f}" for k in
                                                                          ("raw", "temperature", "calibrator")))
        for name, s in shift["conditions"].items()]) if shift else None
    return {"kind": Calibrator.from_dict(ev["calibrator"]).kind, "fitted_on": escape(ev.get("calibrator_fitted_on", "?")),
            "images": n, "tta": bool(ev.get("tta")), "shift_table": shift_table, "carried": carried,
            "table": table(("output", "probabilities", "ECE (15 bins, %)", "classwise-ECE (%)", "NLL", "Brier"), lines)}


def _scores(d: dict[str, Any], suffix: str) -> tuple[str, str, str, str]:
    cw = d.get("classwise_ece" + suffix)
    return (f"{100 * d['ece' + suffix]:.2f}", "—" if cw is None else f"{100 * cw:.2f}", f"{d['nll' + suffix]:.4f}",
            f"{d['brier' + suffix]:.4f}")
