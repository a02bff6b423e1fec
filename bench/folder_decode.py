"""Decode and cache throughput of an image folder: the first read (decode) and later reads (cache).

Writes ``--n`` images into ``OUT/<class>/`` (CIFAR-10 training images upscaled to ``--side`` pixels,
saved as JPEG: a folder of ordinary photos, not pre-shrunk 32x32 files), then times
``aperture_zoo.folder.load_folder`` twice: cold (scan + parallel decode through the image rule +
cache write) and warm (scan + cache read). Prints images/s and the cache's bytes per image as JSON.

    python bench/folder_decode.py --data-dir DIR_WITH_CIFAR10 --out /tmp/folder-bench --n 20000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np


def write_folder(cifar_dir: str, out: Path, n: int, side: int) -> Path:
    from PIL import Image

    from aperture_zoo.data import load_split

    train = load_split("train", cifar_dir)
    idx = np.random.default_rng(0).choice(len(train), size=n, replace=n > len(train))
    for k, i in enumerate(idx):
        folder = out / train.classes[int(train.labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(train.images[i].transpose(1, 2, 0)).resize((side, side), Image.Resampling.BICUBIC)
        img.save(folder / f"{k:07d}.jpg", quality=90)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder containing cifar-10-batches-py/")
    p.add_argument("--out", default="/tmp/aperture-folder-bench")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--side", type=int, default=96)
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: CPUs, at most 8)")
    args = p.parse_args()

    from aperture_zoo.folder import load_folder

    out = Path(args.out)
    images, cache = out / "images", out / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    if not images.is_dir() or sum(1 for _ in images.rglob("*.jpg")) != args.n:
        shutil.rmtree(images, ignore_errors=True)
        write_folder(args.data_dir, images, args.n, args.side)
    folder_bytes = sum(f.stat().st_size for f in images.rglob("*.jpg"))
    start = time.perf_counter()
    cold = load_folder(images, cache_dir=cache, workers=args.workers)
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    warm = load_folder(images, cache_dir=cache, workers=args.workers)
    warm_s = time.perf_counter() - start
    assert warm.from_cache and np.array_equal(warm.images, cold.images)
    n = len(cold.images)
    cache_bytes = cold.cache_file.stat().st_size if cold.cache_file else 0
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "images": n, "source": f"{args.side}x{args.side} JPEG",
        "folder_mb": round(folder_bytes / 1e6, 1), "workers": args.workers or min(os.cpu_count() or 1, 8),
        "decode_s": round(cold_s, 1), "decode_images_per_s": round(n / cold_s),
        "cached_read_s": round(warm_s, 2), "cached_images_per_s": round(n / warm_s),
        "cache_bytes_per_image": round(cache_bytes / n, 1), "skipped": len(cold.skipped),
    }, indent=1))


if __name__ == "__main__":
    main()
