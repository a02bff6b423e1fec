"""A small, learnable CIFAR-10 look-alike written in the real python-batch file format.

Each class is a colour plus a stripe orientation, with pixel noise, so a ResNet learns it in a
couple of epochs on CPU while the project's real reader parses every byte.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_images(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    palette = np.array(
        [[230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40], [230, 40, 230],
         [40, 230, 230], [240, 140, 20], [130, 60, 200], [120, 120, 120], [250, 250, 250]],
        dtype=np.float32,
    )
    yy, xx = np.mgrid[0:32, 0:32]
    images, labels = [], []
    for c in range(10):
        stripes = ((xx if c % 2 else yy) // 4 % 2).astype(np.float32)  # 8 px period
        for _ in range(n_per_class):
            img = palette[c][:, None, None] * (0.55 + 0.45 * stripes)[None]
            img = img + rng.normal(0, 25, size=img.shape)
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.array(labels, dtype=np.int64)


def write_cifar10(root: Path, n_train_per_class: int = 50, n_test_per_class: int = 20, seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py`` (5 train batches, a test batch, batches.meta); return root.

    Like the project's real copy, the images are sorted by class, so loaders must shuffle.
    """
    out = Path(root) / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    x, y = make_images(n_train_per_class, seed)
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
        _dump(out / f"data_batch_{i}", x[part], y[part], f"training batch {i} of 5")
    xt, yt = make_images(n_test_per_class, seed + 1)
    _dump(out / "test_batch", xt, yt, "testing batch 1 of 1")
    with open(out / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": len(y) // 5,
                     b"num_vis": 3072}, f, protocol=2)
    return Path(root)


def _dump(path: Path, x: np.ndarray, y: np.ndarray, label: str) -> None:
    batch = {
        b"batch_label": label.encode(),
        b"labels": [int(v) for v in y],
        b"data": x.reshape(len(x), -1),
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(y))],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def write_cifar100(root: Path, n_train_per_class: int = 2, n_test_per_class: int = 1, seed: int = 0) -> Path:
    """Write ``root/cifar-100-python`` (train, test, meta) in the official format; return root.

    100 fine classes (the synthetic CIFAR-10 look-alike's 10 patterns, each at 10 brightness levels).
    """
    out = Path(root) / "cifar-100-python"
    out.mkdir(parents=True, exist_ok=True)
    for name, n, s in (("train", n_train_per_class, seed), ("test", n_test_per_class, seed + 1)):
        x, y = make_images(n * 10, s)  # 10 * n per base pattern: n per fine class
        fine = y * 10 + np.arange(len(y)) % 10
        x = np.clip(x.astype(np.int16) - (fine % 10)[:, None, None, None] * 8, 0, 255).astype(np.uint8)
        batch = {b"filenames": [f"{i}.png".encode() for i in range(len(y))], b"batch_label": name.encode(),
                 b"fine_labels": [int(v) for v in fine], b"coarse_labels": [int(v) // 5 for v in fine],
                 b"data": x.reshape(len(x), -1)}
        with open(out / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(out / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"fine_{i:02d}".encode() for i in range(100)],
                     b"coarse_label_names": [f"coarse_{i:02d}".encode() for i in range(20)]}, f, protocol=2)
    return Path(root)


def write_png_folder(root: Path, images: np.ndarray, labels: np.ndarray, classes: list[str], per_class: int) -> Path:
    """``root/<class>/<n>.png`` with the first ``per_class`` images of each of ``classes`` (uint8 N x 3 x 32 x 32)."""
    from PIL import Image

    for c, name in enumerate(classes):
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(np.flatnonzero(labels == c)[:per_class]):
            Image.fromarray(images[i].transpose(1, 2, 0)).save(folder / f"{k:04d}.png")
    return Path(root)
