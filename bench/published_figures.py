"""The published weights' test figures, measured the way the cards report them, into model_cards/.

For each model: every CIFAR-10 test image and its mirror, once (top-1 with and without flip TTA,
ECE/NLL/Brier before and after the cross-fitted temperature, the flip-averaged calibration), then
the five corruptions at five severities on a stratified sample (``--corruption-images`` per
corruption and severity; 25 corrupted copies of all 10,000 images cost 25 evaluations). Writes
``model_cards/<name>/eval.json``, ``confusion.png`` and ``reliability.png`` through the same
``write_eval_report`` as ``aperture eval``, and prints the catalog figures for each record. Then
``aperture card <name>`` rebuilds the card from them.

    python bench/published_figures.py --data-dir DIR_WITH_CIFAR10 [--models resnet10,resnet22]
    python bench/published_figures.py --data-dir DIR --table    # the README table from the eval.json files
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def measure(name: str, data_dir: str, cards_dir: Path, corruption_images: int, batch_size: int) -> dict:
    import torch

    import aperture_zoo
    from aperture_zoo.catalog import get_weights
    from aperture_zoo.data import load_split
    from aperture_zoo.files import WEIGHTS_FILENAME
    from aperture_zoo.train.evaluate import evaluate, write_eval_report
    from aperture_zoo.train.robustness import evaluate_corruptions

    weights = cards_dir / name / WEIGHTS_FILENAME
    model = aperture_zoo.load(name, weights=weights)
    split = load_split("test", data_dir)
    t0 = time.perf_counter()
    result = evaluate(model, split, batch_size=batch_size, device="cpu", mirror=True)
    result.extra["corruptions"] = evaluate_corruptions(model, split, "all", max_images=corruption_images,
                                                       batch_size=batch_size, device="cpu")
    result.extra["calibration_measured_on"] = (
        f"CPU ({platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}); the logits of the "
        "plain and mirrored images computed once and reused for every figure")
    e = write_eval_report(result, cards_dir / name, name, WEIGHTS_FILENAME, weights)
    record = get_weights(name)
    return {"tag": record.tag, "images": e["num_images"], "seconds": round(time.perf_counter() - t0, 1),
            "top1": round(e["top1"], 2), "temperature": round(e["temperature"], 4),
            "top1_tta": round(e["top1_by_tta"]["flip"], 2), "ece": round(100 * e["ece"], 2),
            "ece_calibrated": round(100 * e["ece_calibrated"], 2),
            "ece_tta_calibrated": round(100 * e["tta_calibration"]["ece_calibrated"], 2),
            "nll": round(e["nll"], 4), "nll_calibrated": round(e["nll_calibrated"], 4),
            "corruption_top1": round(e["corruptions"]["mean"], 2), "corruption_worst": e["corruptions"]["worst"]}


def table(cards_dir: Path, names: list[str]) -> str:
    """The README's table, from the eval.json files (so no figure is typed by hand)."""
    from aperture_zoo.catalog import get_weights

    rows = ["| weights | top-1 % | flip TTA % | ECE % (15 bins) before → after T | NLL before → after | T | "
            "corruptions: mean top-1 % (worst) | test images |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        e = json.loads((cards_dir / name / "eval.json").read_text())
        c = e["corruptions"]
        rows.append(f"| {get_weights(name).tag} | {e['top1_by_tta']['none']:.2f} | {e['top1_by_tta']['flip']:.2f} | "
                    f"{100 * e['ece']:.2f} → **{100 * e['ece_calibrated']:.2f}** | {e['nll']:.3f} → "
                    f"{e['nll_calibrated']:.3f} | {e['temperature']:.3f} | {c['mean']:.2f} ({c['worst']}: "
                    f"{c['worst_mean']:.2f}) | {e['calibration_num_images']:,} |")
    return "\n".join(rows)


def main() -> None:
    from aperture_zoo.pretrained import MODEL_CARDS_DIR
    from aperture_zoo.registry import list_models

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="folder containing cifar-10-batches-py/ (not needed with --table)")
    p.add_argument("--models", default=",".join(list_models()))
    p.add_argument("--cards-dir", type=Path, default=MODEL_CARDS_DIR)
    p.add_argument("--corruption-images", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--table", action="store_true", help="only print the README table from the eval.json files")
    args = p.parse_args()
    if args.table:
        print(table(args.cards_dir, args.models.split(",")))
        return
    if not args.data_dir:
        p.error("--data-dir is required to measure (only --table works without it)")
    for name in args.models.split(","):
        print(json.dumps(measure(name, args.data_dir, args.cards_dir, args.corruption_images, args.batch_size)),
              flush=True)


if __name__ == "__main__":
    main()
