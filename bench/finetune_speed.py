"""Fine-tune speed: the default fine-tune's wall time in plain fp32 epochs, and its accuracy.

In one process, on one image folder and one held-out split (seed 0), for ``--arch`` (resnet10):

1. **the unit**: one plain fp32 training epoch of the network over the folder's training images
   (the previous fine-tune recipe's batch size, augmentation and optimizer; no probe; the loop's
   own ``train_seconds`` of that epoch, so evaluation and file writing are not in it);
2. **the fine-tune** as ``aperture train ARCH --dataset DIR --init ARCH.fast`` runs it (the
   ``finetune`` recipe: bf16 autocast where the CPU computes it natively), timed around ``fit()``
   (setup, probe, epochs, final evaluation, checkpoint and weights all counted): its ratio to the
   unit, and images/s of each step: probe features, probe fit, fine-tune epochs, final evaluation;
3. **the previous default** (10 epochs, peak lr 0.02 after a 20 % warm-up, evaluated every epoch,
   no probe) on the same split: held-out top-1 beside the new one's, wall time and ratio.

Each fine-tune runs between two plain epochs and is divided by their mean; fine-tunes repeat
``--repeats`` times (the spread under a changing load), and the load average is recorded with each. A ratio within one repeat is
what carries over to another machine. Nothing is written outside ``--work`` (a temporary folder by
default) except ``--json``.

    python bench/finetune_speed.py --dataset DIR --repeats 3 --json result.json
    python bench/finetune_speed.py --make cifar --data-dir DIR_WITH_CIFAR10   # 1,500 CIFAR-10 test images
    python bench/finetune_speed.py --make digits   # scikit-learn's 1,797 8x8 digits as 32x32 PNGs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# the classes of the CIFAR-like folder, named as a user might: not CIFAR-10's names
CIFAR_NAMES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar(cifar_dir: str, out: Path, per_class: int = 150) -> Path:
    """``out/<name>/testNNNNN.png``: the first ``per_class`` CIFAR-10 *test* images of each class."""
    from PIL import Image

    from aperture_zoo.data import load_split

    test = load_split("test", cifar_dir)
    for c, name in enumerate(CIFAR_NAMES):
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(test.labels == c)[:per_class]:
            Image.fromarray(test.images[i].transpose(1, 2, 0)).save(out / name / f"test{i:05d}.png")
    return out


def make_digits(out: Path) -> Path:
    """``out/<digit>/NNNN.png``: scikit-learn's 1,797 8x8 grey digits, upscaled to 32x32 (bilinear)."""
    from PIL import Image

    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("--make digits needs scikit-learn (pip install scikit-learn)") from None
    digits = load_digits()
    for i, (img, y) in enumerate(zip(digits.images, digits.target)):
        (out / str(y)).mkdir(parents=True, exist_ok=True)
        pixels = (img / 16.0 * 255).round().astype(np.uint8)
        Image.fromarray(pixels, "L").resize((32, 32), Image.Resampling.BILINEAR).save(out / str(y) / f"{i:04d}.png")
    return out


def previous_recipe() -> Any:
    """The ``finetune`` recipe before the fast path: 10 epochs from a random head, tested every epoch."""
    from aperture_zoo.train.recipes import FAST

    return FAST.replace(name="finetune-10ep", epochs=10, batch_size=128, lr=0.02, warmup_fraction=0.2, cutout=0,
                        eval_every=1, probe_head=False)


def train(folder: Path, arch: str, recipe: Any, out: Path) -> tuple[Any, float, dict[str, Any]]:
    """One ``fit`` from the published weights: its result, the wall seconds around it, its run.json."""
    from aperture_zoo.train import TrainConfig, fit

    start = time.perf_counter()
    result = fit(TrainConfig(model=arch, dataset=str(folder), init=f"{arch}.fast", recipe=recipe, seed=0,
                             device="cpu", out_dir=out, progress=False))
    wall = time.perf_counter() - start
    return result, wall, json.loads((out / "run.json").read_text())


def plain_epoch(folder: Path, arch: str, out: Path) -> tuple[float, float, int]:
    """One plain fp32 training epoch: its seconds and images/s (the loop's own: no evaluation, no
    writing), and the run's training images (a folder's default validation share is held out)."""
    recipe = previous_recipe().replace(epochs=1, eval_every=0, precision="fp32")
    result, _, run = train(folder, arch, recipe, out)
    split = (run.get("data") or {}).get("split") or {}
    row = result.metrics[0]
    return float(row["train_seconds"]), float(row["images_per_s"]), len(split.get("train", []))


def steps(result: Any, wall: float, run: dict[str, Any]) -> dict[str, Any]:
    """Where the fine-tune's time went, as seconds and images/s per step."""
    probe = run.get("probe") or {}
    rows = result.metrics
    eval_s = rows[-1]["epoch_seconds"] - rows[-1]["train_seconds"]
    train_s = sum(r["train_seconds"] for r in rows)
    probe_s = probe.get("feature_seconds", 0.0) + probe.get("fit_seconds", 0.0)
    out: dict[str, Any] = {}
    if probe:
        out["probe_features"] = {"s": probe["feature_seconds"], "images_per_s": round(probe["images"] / probe["feature_seconds"]),
                                 "precision": probe["precision"]}
        out["probe_fit"] = {"s": probe["fit_seconds"], "images_per_s": round(probe["images"] / probe["fit_seconds"]),
                            "iterations": probe["iterations"]}
    out["epochs"] = [{"s": round(r["train_seconds"], 2), "images_per_s": round(r["images_per_s"], 1)} for r in rows]
    out["final_eval"] = {"s": round(eval_s, 2), "images_per_s": round(rows[-1]["test_images"] / max(eval_s, 1e-9))}
    out["setup_and_writing_s"] = round(wall - probe_s - train_s - sum(
        r["epoch_seconds"] - r["train_seconds"] for r in rows), 2)
    return out


def folder_parser(description: str) -> argparse.ArgumentParser:
    """The options every fine-tune bench shares: which folder (given or made) and which network."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--dataset", help="an image folder DIR/<class>/<image>")
    p.add_argument("--make", choices=["cifar", "digits"], help="write the folder into --work first")
    p.add_argument("--data-dir", help="folder containing cifar-10-batches-py/ (for --make cifar)")
    p.add_argument("--arch", default="resnet10")
    p.add_argument("--work", help="runs and made folders go here (default: a temporary folder)")
    p.add_argument("--json", help="also write the result to this file")
    return p


def the_folder(args: argparse.Namespace, work: Path) -> Path:
    """``--dataset``, or the folder ``--make`` writes into ``work``."""
    if args.make == "cifar":
        if not args.data_dir:
            raise SystemExit("--make cifar needs --data-dir (the folder containing cifar-10-batches-py/)")
        return make_cifar(args.data_dir, work / "cifar1500")
    if args.make == "digits":
        return make_digits(work / "digits")
    if args.dataset:
        return Path(args.dataset)
    raise SystemExit("give --dataset DIR or --make cifar|digits")


def main() -> None:
    p = folder_parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--no-previous", action="store_true", help="skip the previous 10-epoch fine-tune")
    args = p.parse_args()

    import torch

    from aperture_zoo.datasets import load_dataset
    from aperture_zoo.device import autocast_dtype, device_name
    from aperture_zoo.train.recipes import FINETUNE

    work = Path(args.work or tempfile.mkdtemp(prefix="finetune-speed-"))
    folder = the_folder(args, work)

    start = time.perf_counter()
    data = load_dataset(str(folder))  # decoded once here, so every run below reads the cache
    report: dict[str, Any] = {
        "machine": device_name("cpu", detail=True), "cpus": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "folder": str(folder), "classes": len(data.classes),
        "folder_train_images": len(data.train), "test_images": len(data.test),
        "first_load_s": round(time.perf_counter() - start, 2), "load_before": os.getloadavg(),
        "recipe": FINETUNE.to_dict(), "repeats": [],
        "finetune_train_precision": "bf16" if autocast_dtype(FINETUNE.precision, "cpu") else "fp32",
    }
    print(json.dumps({k: v for k, v in report.items() if k != "recipe"}), flush=True)
    first = plain_epoch(folder, args.arch, work / "plain-0")
    units = [first[0]]
    report["train_images"], report["plain_epoch_images_per_s"] = first[2], [round(first[1], 1)]
    for i in range(args.repeats):  # each fine-tune between two plain epochs: its unit is their mean
        result, wall, run = train(folder, args.arch, FINETUNE, work / f"fast-{i}")
        seconds, ips, _ = plain_epoch(folder, args.arch, work / f"plain-{i + 1}")
        units.append(seconds)
        report["plain_epoch_images_per_s"].append(round(ips, 1))
        unit = (units[-2] + units[-1]) / 2
        row = {"plain_epoch_s": [round(units[-2], 2), round(units[-1], 2)], "finetune_wall_s": round(wall, 2),
               "ratio": round(wall / unit, 2), "test_top1": round(result.test_top1, 2),
               "steps": steps(result, wall, run), "load": os.getloadavg()}
        report["repeats"].append(row)
        print(json.dumps(row), flush=True)
    if not args.no_previous:
        result, wall, _ = train(folder, args.arch, previous_recipe(), work / "previous")
        units.append(plain_epoch(folder, args.arch, work / "plain-end")[0])
        unit = (units[-2] + units[-1]) / 2
        report["previous"] = {"epochs": 10, "wall_s": round(wall, 2), "test_top1": round(result.test_top1, 2),
                              "plain_epoch_s": [round(units[-2], 2), round(units[-1], 2)],
                              "ratio": round(wall / unit, 2), "load": os.getloadavg()}
        print(json.dumps(report["previous"]), flush=True)
    report["load_after"] = os.getloadavg()
    ratios = [r["ratio"] for r in report["repeats"]]
    summary = {"ratio_min": min(ratios), "ratio_median": float(np.median(ratios)), "ratio_max": max(ratios),
               "goal_ratio": 2.5, "test_top1": report["repeats"][0]["test_top1"]}
    if "previous" in report:
        summary["previous_test_top1"] = report["previous"]["test_top1"]
        summary["top1_delta_points"] = round(summary["test_top1"] - report["previous"]["test_top1"], 2)
    report["summary"] = summary
    print(json.dumps(summary, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
