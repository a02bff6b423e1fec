"""Batched augmentation on the training device: crop, flip, cutout, mixup, label smoothing.

Everything works on whole uint8 batches with tensor indexing, so the GPU never waits for Python
per-sample transforms. Randomness comes from a ``torch.Generator`` the caller seeds per step
(see ``step_seed``), which makes every batch a pure function of (seed, epoch, step): resuming
mid-epoch needs no saved RNG state, and DDP ranks agree on the global batch's draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from .recipes import Recipe


def step_seed(seed: int, epoch: int, step: int) -> int:
    """A well-mixed 63-bit seed for one (epoch, step); step -1 is the epoch's shuffle."""
    state = np.random.SeedSequence([seed, epoch, step + 1]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def flip_phase(n: int, seed: int, device: torch.device | str = "cpu") -> Tensor:
    """A random 0/1 per training image: the parity of the epochs in which ``alternating_flips`` mirrors it."""
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 0x666C6970]).generate_state(1)[0]))
    return torch.randint(0, 2, (n,), generator=gen).to(device)


def alternating_flips(indices: Tensor, epoch: int, phase: Tensor) -> Tensor:
    """airbench's alternating flip: image ``i`` is mirrored exactly when ``epoch + phase[i]`` is odd.

    So the first epoch mirrors a random half, and every image then alternates: over any two
    consecutive epochs each image is seen once as it is and once mirrored, never twice the same way.
    """
    return (phase[indices] + epoch) % 2 == 1


def crop_flip(
    images: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, padding: int, pad_mode: str = "reflect"
) -> Tensor:
    """Random-crop (after padding by ``padding``) and mirror a uint8 N x C x H x W batch.

    ``dy``/``dx`` in [0, 2 * padding] are the crop's top-left corner in the padded image, ``flip``
    a bool per image. The padding is never materialised: each output pixel gathers its source pixel
    (reflected at the border, or zero for ``pad_mode="zeros"``), which also works for uint8.
    """
    n, c, h, w = images.shape
    dev = images.device
    rows = torch.arange(h, device=dev)[None, :] + dy[:, None] - padding  # N x H, unpadded coords
    cols = torch.arange(w, device=dev)[None, :] + dx[:, None] - padding  # N x W
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    if pad_mode == "reflect":
        rows = _reflect(rows, h)
        cols = _reflect(cols, w)
        inside = None
    elif pad_mode == "zeros":
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    else:
        raise ValueError(f"pad_mode must be 'reflect' or 'zeros', not {pad_mode!r}")
    idx_n = torch.arange(n, device=dev)[:, None, None, None]
    idx_c = torch.arange(c, device=dev)[None, :, None, None]
    out = images[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]
    if inside is not None:
        out = out * inside[:, None].to(out.dtype)
    return out


def _reflect(idx: Tensor, size: int) -> Tensor:
    """numpy/torch 'reflect' padding (edge not repeated) for offsets up to ``size - 1``."""
    idx = idx.abs()
    return torch.where(idx >= size, 2 * (size - 1) - idx, idx)


def normalise(images: Tensor, mean: Tensor, std: Tensor, channels_last: bool = False) -> Tensor:
    """uint8 N x 3 x H x W -> float32, standardised with per-channel mean/std on a 0-1 scale."""
    x = (images.float() - mean.view(1, -1, 1, 1) * 255.0) / (std.view(1, -1, 1, 1) * 255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def cutout(x: Tensor, size: int, cy: Tensor, cx: Tensor) -> Tensor:
    """Zero a size x size square centred at (cy, cx) per image (clipped at the border).

    Applied after normalisation, so the square is the data-set mean colour, as in DeVries & Taylor.
    """
    h, w = x.shape[-2:]
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    top, left = cy[:, None] - size // 2, cx[:, None] - size // 2
    in_y = (ys >= top) & (ys < top + size)
    in_x = (xs >= left) & (xs < left + size)
    keep = ~(in_y[:, :, None] & in_x[:, None, :])
    return x * keep[:, None].to(x.dtype)


def soft_targets(labels: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """One-hot targets with label smoothing (the true class gets 1 - s + s/K, the rest s/K)."""
    t = torch.full((labels.shape[0], num_classes), smoothing / num_classes, device=labels.device)
    return t.scatter_(1, labels[:, None], 1.0 - smoothing + smoothing / num_classes)


def mixup(x: Tensor, targets: Tensor, lam: float, partner: Tensor) -> tuple[Tensor, Tensor]:
    """Convex combination of each example with ``x[partner]`` (Zhang et al. 2018); targets likewise."""
    return lam * x + (1.0 - lam) * x[partner], lam * targets + (1.0 - lam) * targets[partner]


@dataclass(frozen=True)
class AugmentConfig:
    crop_padding: int = 4
    pad_mode: str = "reflect"
    flip: bool = True
    cutout: int = 0
    mixup_alpha: float = 0.0
    label_smoothing: float = 0.0
    alternating_flip: bool = False

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> AugmentConfig:
        """The augmentation a recipe trains with: the trainer and the throughput benchmark use the same."""
        return cls(recipe.crop_padding, recipe.pad_mode, recipe.flip, recipe.cutout, recipe.mixup_alpha,
                   recipe.label_smoothing, recipe.alternating_flip)


@dataclass
class Batch:
    inputs: Tensor   # normalised float (channels_last if asked)
    targets: Tensor  # N x K soft targets (mixup and smoothing applied)
    labels: Tensor   # N int64 true labels, for training accuracy


def augment_batch(
    images: Tensor,
    labels: Tensor,
    cfg: AugmentConfig,
    mean: Tensor,
    std: Tensor,
    num_classes: int,
    generator: torch.Generator,
    shard: slice | None = None,
    channels_last: bool = False,
    flips: Tensor | None = None,
) -> Batch:
    """Augment a global uint8 batch and return the ``shard`` this rank trains on.

    Random draws are made for the whole global batch (cheap: a few numbers per image) so every
    rank consumes the generator identically and the shard of a 2-rank run sees exactly the crops
    and flips the single-process run would. The mixup partner is drawn within the shard.
    ``flips`` (one bool per image of the global batch, e.g. ``alternating_flips``) replaces the coin
    flip; the coin is still drawn, so the other draws stay where they were.
    """
    n = images.shape[0]
    dev = images.device
    p = cfg.crop_padding
    dy = torch.randint(0, 2 * p + 1, (n,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * p + 1, (n,), device=dev, generator=generator)
    fl = torch.rand(n, device=dev, generator=generator) < 0.5
    if flips is not None:
        fl = flips
    cy = torch.randint(0, 32, (n,), device=dev, generator=generator)
    cx = torch.randint(0, 32, (n,), device=dev, generator=generator)
    lam = float(np.random.default_rng(generator.initial_seed()).beta(cfg.mixup_alpha, cfg.mixup_alpha)) \
        if cfg.mixup_alpha > 0 else 1.0
    if shard is not None:
        images, labels, dy, dx, fl, cy, cx = (t[shard] for t in (images, labels, dy, dx, fl, cy, cx))
    if p > 0 or cfg.flip:
        images = crop_flip(images, dy, dx, fl if cfg.flip else torch.zeros_like(fl), p, cfg.pad_mode)
    x = normalise(images, mean, std)
    if cfg.cutout > 0:
        x = cutout(x, cfg.cutout, cy, cx)
    targets = soft_targets(labels, num_classes, cfg.label_smoothing)
    if lam < 1.0:
        partner = torch.randperm(x.shape[0], device=dev, generator=generator)
        x, targets = mixup(x, targets, lam, partner)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return Batch(inputs=x, targets=targets, labels=labels)
