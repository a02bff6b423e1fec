"""The published weights' test figures, measured the way the cards report them, into model_cards/.

For each model: every CIFAR-10 test image and its mirror, once (top-1 with and without flip TTA;
ECE, classwise-ECE, NLL and Brier uncalibrated, with one temperature and with the calibrator, each
cross-fitted on stratified halves, for the plain and the flip-averaged outputs), the calibration
under shift (the five corruptions at severities 3 and 5, with the calibrators fitted on the clean
images), and the five corruptions at five severities' top-1 on a stratified sample
(``--corruption-images`` per corruption and severity). Logits come from ``logit_cache.py`` (the
library's ``evaluate_sums``, computed once per weights, data and condition); the corruption top-1
block of an existing eval.json of the same weights is kept unless ``--corruption-top1`` asks to
measure it again. Writes ``model_cards/<name>/eval.json``, ``confusion.png`` and
``reliability.png`` through the same ``write_eval_report`` as ``aperture eval``, and prints the
catalog figures for each record. Then ``aperture card <name>`` rebuilds the card from them.

    python bench/published_figures.py --data-dir DIR_WITH_CIFAR10 [--models resnet10,resnet22] [--shift-images N]
    python bench/published_figures.py --table    # the README tables from the eval.json files
    python bench/published_figures.py --figure PNG   # the six reliability diagrams side by side
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from logit_cache import SHIFT, logits as cached_logits


def _result_from_logits(plain: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]):  # type: ignore[no-untyped-def]
    from aperture_zoo.calibration import nll
    from aperture_zoo.train.evaluate import EvalResult

    k = len(classes)
    confusion = np.bincount(labels * k + plain.argmax(1), minlength=k * k).reshape(k, k)
    return EvalResult(top1=100.0 * float(np.trace(confusion)) / len(labels), loss=nll(plain, labels),
                      num_images=len(labels), confusion=confusion.tolist(), classes=classes)


def measure(name: str, data_dir: str, cards_dir: Path, corruption_images: int, shift_images: int | None,
            corruption_top1: bool) -> dict:
    import torch

    import aperture_zoo
    from aperture_zoo.catalog import get_weights
    from aperture_zoo.data import load_split, stratified_indices
    from aperture_zoo.files import WEIGHTS_FILENAME, file_sha256
    from aperture_zoo.train.calibrate import logit_figures
    from aperture_zoo.train.robustness import evaluate_corruptions

    weights = cards_dir / name / WEIGHTS_FILENAME
    model = aperture_zoo.load(name, weights=weights)
    t0 = time.perf_counter()
    clean = cached_logits(name, data_dir, "clean", weights=weights, verbose=True)
    labels = clean["labels"]
    rows = None if shift_images is None else stratified_indices(labels, shift_images, 0)
    shifted = {f"{c}:{s}": (cached_logits(name, data_dir, f"{c}:{s}", shift_images, weights, True)["plain"], rows)
               for c, s in SHIFT}
    result = _result_from_logits(clean["plain"], labels, model.spec.label_names)
    result.extra.update(logit_figures(clean["plain"], clean["mirrored"], labels, model, tta=False, shifted=shifted))
    old_path = cards_dir / name / "eval.json"
    old = json.loads(old_path.read_text()) if old_path.is_file() else {}
    if corruption_top1 or old.get("weights_sha256") != file_sha256(weights) or "corruptions" not in old:
        result.extra["corruptions"] = evaluate_corruptions(model, load_split("test", data_dir), "all",
                                                           max_images=corruption_images, batch_size=500, device="cpu")
    else:  # measured before on these very weights: kept, with when it was measured
        result.extra["corruptions"] = {**old["corruptions"], "measured_at": old["corruptions"].get(
            "measured_at", old.get("evaluated_at"))}
    result.device, result.images_per_s = "cpu", float(old.get("images_per_s", 0.0))
    result.extra["calibration_measured_on"] = (
        f"CPU ({platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}); the logits of the plain, "
        "mirrored and corrupted images computed once (evaluate_sums, fp32) and reused for every figure")
    from aperture_zoo.train.evaluate import write_eval_report

    e = write_eval_report(result, cards_dir / name, name, WEIGHTS_FILENAME, weights)
    record, tc = get_weights(name), e["tta_calibration"]
    return {"tag": record.tag, "images": e["num_images"], "seconds": round(time.perf_counter() - t0, 1),
            "top1": round(e["top1"], 2), "top1_tta": round(e["top1_by_tta"]["flip"], 2),
            "temperature": round(e["temperature_scaling"]["temperature"], 4),
            "calibrator": e["calibrator"], "calibrator_tta": tc["calibrator"],
            "ece": round(100 * e["ece"], 2), "ece_calibrated": round(100 * e["ece_calibrated"], 2),
            "ece_temperature": round(100 * e["temperature_scaling"]["ece"], 2),
            "ece_tta_calibrated": round(100 * tc["ece_calibrated"], 2),
            "corruption_top1": round(e["corruptions"]["mean"], 2)}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def table(cards_dir: Path, names: list[str]) -> str:
    """The README's tables, from the eval.json files (so no figure is typed by hand)."""
    from aperture_zoo.calibrators import Calibrator
    from aperture_zoo.catalog import get_weights

    out = ["| weights | top-1 % | flip TTA % | corruptions: mean top-1 % (worst) | test images |", "|---|---|---|---|---|"]
    cal = ["| weights | output | ECE % (15 bins): uncalibrated → one T → **calibrator** | classwise-ECE % | NLL | Brier | "
           "calibrator |", "|---|---|---|---|---|---|---|"]
    shift = ["| weights | " + " | ".join(c.replace("_", " ") + f" {s}" for c, s in SHIFT) + " |", "|---" * (len(SHIFT) + 1) + "|"]
    for name in names:
        e = json.loads((cards_dir / name / "eval.json").read_text())
        c, tag = e["corruptions"], get_weights(name).tag
        out.append(f"| {tag} | {e['top1_by_tta']['none']:.2f} | {e['top1_by_tta']['flip']:.2f} | {c['mean']:.2f} "
                   f"({c['worst']}: {c['worst_mean']:.2f}) | {e['calibration_num_images']:,} |")
        for output, f in (("plain", e), ("flip TTA", e["tta_calibration"])):
            t = f["temperature_scaling"]
            cal.append(f"| {tag} | {output} | {_pct(f['ece'])} → {_pct(t['ece'])} → **{_pct(f['ece_calibrated'])}** | "
                       f"{_pct(f['classwise_ece'])} → {_pct(t['classwise_ece'])} → {_pct(f['classwise_ece_calibrated'])} | "
                       f"{f['nll']:.3f} → {t['nll']:.3f} → {f['nll_calibrated']:.3f} | {f['brier']:.4f} → "
                       f"{t['brier']:.4f} → {f['brier_calibrated']:.4f} | {Calibrator.from_dict(f['calibrator']).kind} |")
        s = e.get("calibration_under_shift", {}).get("conditions", {})
        shift.append(f"| {tag} | " + " | ".join(
            f"{_pct(s[k]['raw']['ece'])} / {_pct(s[k]['temperature']['ece'])} / **{_pct(s[k]['calibrator']['ece'])}**"
            if k in s else "—" for k in (f"{c}:{v}" for c, v in SHIFT)) + " |")
    return "\n\n".join("\n".join(t) for t in (out, cal, shift))


def figure(cards_dir: Path, names: list[str], path: Path) -> Path:
    """One reliability figure of all the models side by side: uncalibrated, one temperature and the
    calibrator (plain outputs, held out), from their eval.json files."""
    from aperture_zoo.train.plots import _pyplot, save_figure

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.9), squeeze=False, sharey=True)
    styles = (("uncalibrated", "tab:grey", "uncalibrated"), ("temperature", "tab:blue", "one temperature"),
              ("calibrated", "tab:red", "calibrator"))
    for ax, name in zip(axes[0], names):
        e = json.loads((cards_dir / name / "eval.json").read_text())
        for key, colour, label in styles:
            b = e["reliability"][key]
            shown = [i for i, c in enumerate(b["count"]) if c >= 20]  # bins of a handful are noise
            ax.plot([b["confidence"][i] for i in shown], [b["accuracy"][i] for i in shown], "o-", ms=3, lw=1,
                    color=colour, label=label)
        ax.plot([0, 1], [0, 1], "--", color="black", lw=0.7)
        ax.set(xlim=(0.3, 1), ylim=(0.3, 1), xlabel="confidence", title=f"{name}\nECE {_pct(e['ece'])} → "
               f"{_pct(e['temperature_scaling']['ece'])} → {_pct(e['ece_calibrated'])} %")
        ax.title.set_fontsize(8)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=6, loc="upper left")
    return save_figure(plt, fig, path)


def main() -> None:
    from aperture_zoo.pretrained import MODEL_CARDS_DIR
    from aperture_zoo.registry import list_models

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="folder containing cifar-10-batches-py/ (not needed with --table/--figure)")
    p.add_argument("--models", default=",".join(list_models()))
    p.add_argument("--cards-dir", type=Path, default=MODEL_CARDS_DIR)
    p.add_argument("--corruption-images", type=int, default=1000)
    p.add_argument("--shift-images", type=int, default=None, help="a stratified sample per corruption for the "
                   "calibration under shift (default: all test images)")
    p.add_argument("--corruption-top1", action="store_true", help="measure the corruption top-1 block again")
    p.add_argument("--table", action="store_true", help="only print the README tables from the eval.json files")
    p.add_argument("--figure", type=Path, help="only draw the reliability figure of all models into this PNG")
    args = p.parse_args()
    names = args.models.split(",")
    if args.table or args.figure:
        if args.table:
            print(table(args.cards_dir, names))
        if args.figure:
            print(figure(args.cards_dir, names, args.figure))
        return
    if not args.data_dir:
        p.error("--data-dir is required to measure (only --table and --figure work without it)")
    for name in names:
        print(json.dumps(measure(name, args.data_dir, args.cards_dir, args.corruption_images, args.shift_images,
                                 args.corruption_top1)), flush=True)


if __name__ == "__main__":
    main()
