"""Rebuild gallery/: three CIFAR-10 test images of each class, as PNGs, with their labels.

Run from the repository root with CIFAR-10 available (``--data-dir``, default: where
``aperture`` looks for it): ``python apps/web/make_gallery.py --data-dir ~/data``. The files are
committed, so the demo and its tests never need the data set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from aperture_zoo.data import load_split

PER_CLASS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder containing cifar-10-batches-py")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "gallery")
    args = parser.parse_args()
    test = load_split("test", args.data_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    entries = []
    for label, name in enumerate(test.classes):
        for k, index in enumerate((test.labels == label).nonzero()[0][:PER_CLASS], start=1):
            file = f"{name}_{k}.png"
            Image.fromarray(test.images[index].transpose(1, 2, 0)).save(args.out / file, optimize=True)
            entries.append({"file": file, "label": name})
    (args.out / "gallery.json").write_text(json.dumps(
        {"source": "CIFAR-10 test set (test_batch): the first three images of each class", "images": entries},
        indent=1) + "\n")
    print(f"wrote {len(entries)} images to {args.out}")


if __name__ == "__main__":
    main()
