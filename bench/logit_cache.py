"""The published models' CIFAR-10 test logits, computed once per model and condition and cached.

Calibration figures are functions of the logits; computing them (10,000 images, their mirrors,
ten corrupted copies, six models) takes hours on a CPU, so each (weights, data, condition) is
run once through the library's own ``evaluate_sums`` (fp32, CPU) and kept in
``$APERTURE_LOGITS_CACHE`` (default ``~/.cache/aperture_zoo/logits``). A cached file records the
SHA-256 of the weights and of the test batch it was computed from; the reader checks both, so a
file computed from other weights or data is recomputed, never reused.

Conditions: ``clean`` (plain and mirrored logits) and ``<corruption>:<severity>`` (plain logits),
on all test images or on a stratified sample of ``images`` (``data.subset``, seed 0).

    nice -n 10 python bench/logit_cache.py --data-dir DIR [--models ...] [--conditions clean,shift]
        [--shift-images N]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

SHIFT = [(c, s) for c in ("gaussian_noise", "gaussian_blur", "jpeg_compression", "contrast", "brightness")
         for s in (3, 5)]


def cache_dir() -> Path:
    env = os.environ.get("APERTURE_LOGITS_CACHE")
    return Path(env) if env else Path(os.path.expanduser("~")) / ".cache" / "aperture_zoo" / "logits"


def data_sha256(data_dir: str) -> str:
    from aperture_zoo.data import find_batches_dir
    from aperture_zoo.files import file_sha256

    return file_sha256(find_batches_dir(data_dir) / "test_batch")


def weights_path(name: str) -> Path:
    from aperture_zoo.files import WEIGHTS_FILENAME
    from aperture_zoo.pretrained import MODEL_CARDS_DIR

    return Path(MODEL_CARDS_DIR) / name / WEIGHTS_FILENAME


def _compute(name: str, weights: Path, data_dir: str, condition: str, images: int | None) -> dict[str, np.ndarray]:
    import torch

    import aperture_zoo
    from aperture_zoo.corruptions import corrupt
    from aperture_zoo.data import load_split, subset
    from aperture_zoo.train.evaluate import evaluate_sums

    model = aperture_zoo.load(name, weights=weights)
    test = subset(load_split("test", data_dir), images)
    pixels = test.images
    mirror = condition == "clean"
    if not mirror:
        corruption, severity = condition.split(":")
        pixels = corrupt(pixels, corruption, int(severity))
    collected: list = []
    evaluate_sums(model, torch.as_tensor(pixels), torch.as_tensor(test.labels), torch.tensor(model.spec.mean),
                  torch.tensor(model.spec.std), model.spec.num_classes, 500, logits_out=collected, mirror=mirror)
    out = {"plain": torch.cat([p for p, _ in collected]).numpy(), "labels": test.labels.astype(np.int64)}
    if mirror:
        out["mirrored"] = torch.cat([m for _, m in collected]).numpy()
    return out


def logits(name: str, data_dir: str, condition: str = "clean", images: int | None = None,
           weights: Path | None = None, verbose: bool = False) -> dict[str, np.ndarray]:
    """``{"plain", "labels"[, "mirrored"]}`` for ``name``'s weights under ``condition``, from the cache if
    valid; ``images``: a stratified sample of that many test images (None: all of them)."""
    from aperture_zoo.files import file_sha256

    weights = weights or weights_path(name)
    w_sha, d_sha = file_sha256(weights), data_sha256(data_dir)
    path = cache_dir() / f"{name}-{w_sha[:16]}-{d_sha[:16]}-{condition.replace(':', '-')}{'' if images is None else f'-n{images}'}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            if str(f["weights_sha256"]) == w_sha and str(f["data_sha256"]) == d_sha and str(f["condition"]) == condition \
                    and int(f["images"] if "images" in f.files else -1) == (images or -1):
                return {k: f[k] for k in ("plain", "labels", "mirrored") if k in f.files}
    t0 = time.perf_counter()
    out = _compute(name, weights, data_dir, condition, images)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, weights_sha256=w_sha, data_sha256=d_sha, condition=condition, images=images or -1, **out)
    os.replace(tmp, path)
    if verbose:
        print(f"{name} {condition}: {len(out['labels'])} images in {time.perf_counter() - t0:.0f} s "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return out


def main() -> None:
    from aperture_zoo.registry import list_models

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder containing cifar-10-batches-py/")
    p.add_argument("--models", default=",".join(list_models()))
    p.add_argument("--conditions", default="clean,shift", help="clean and/or shift (the ten corruptions)")
    p.add_argument("--shift-images", type=int, default=None, help="a stratified sample per corruption (default all)")
    args = p.parse_args()
    wanted = args.conditions.split(",")
    names = args.models.split(",")
    if "clean" in wanted:
        for name in names:
            logits(name, args.data_dir, "clean", verbose=True)
    if "shift" in wanted:
        for name in names:
            for corruption, severity in SHIFT:
                logits(name, args.data_dir, f"{corruption}:{severity}", args.shift_images, verbose=True)


if __name__ == "__main__":
    main()
