"""Fine-tuning published weights against training from scratch, on a small folder of real images.

Builds ``DIR/<class>/<image>.png`` from the CIFAR-10 *test* batch (images the published weights
never trained on), then trains the same architecture twice with the same epochs, batch size, seed
and images: once from ``--init <arch>.fast`` (the finetune recipe) and once from scratch (the fast
recipe). Prints the final-epoch held-out top-1 and the wall time of each as JSON.

    python bench/finetune_vs_scratch.py --data-dir DIR_WITH_CIFAR10 --out runs/ft-bench
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def write_folder(cifar_dir: str, out: Path, classes: list[str], per_class: int) -> Path:
    """``out/<class>/testNNNNN.png`` for the first ``per_class`` test images of each class."""
    from PIL import Image

    from aperture_zoo.data import load_split

    test = load_split("test", cifar_dir)
    for name in classes:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(test.labels == test.classes.index(name))[:per_class]:
            Image.fromarray(test.images[i].transpose(1, 2, 0)).save(folder / f"test{i:05d}.png")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder containing cifar-10-batches-py/")
    p.add_argument("--out", default="runs/finetune-bench")
    p.add_argument("--arch", default="resnet10")
    p.add_argument("--classes", default="cat,dog,ship")
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import torch

    from aperture_zoo.train import TrainConfig, fit
    from aperture_zoo.train.recipes import FAST, FINETUNE

    out = Path(args.out)
    folder = write_folder(args.data_dir, out / "images", args.classes.split(","), args.per_class)
    rows = []
    for label, init, recipe in (("fine-tune", f"{args.arch}.fast", FINETUNE), ("scratch", None, FAST)):
        recipe = recipe.replace(epochs=args.epochs, batch_size=args.batch_size)
        start = time.perf_counter()
        result = fit(TrainConfig(model=args.arch, dataset=str(folder), init=init, recipe=recipe, seed=0,
                                 device=args.device, out_dir=out / label, progress=False))
        rows.append({"run": label, "init": init, "recipe": recipe.name, "lr": recipe.lr, "epochs": args.epochs,
                     "batch_size": args.batch_size, "test_top1": round(result.test_top1, 2),
                     "test_images": result.metrics[-1]["test_images"], "wall_s": round(time.perf_counter() - start, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or 'cpu'}",
                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
