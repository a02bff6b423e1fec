"""Device-side augmentation: exact crop/flip/cutout geometry, mixup and smoothing targets, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aperture_zoo.train.augment import (
    AugmentConfig, augment_batch, crop_flip, cutout, mixup, normalise, soft_targets, step_seed,
)
from aperture_zoo.train.loader import rank_slice

MEAN = torch.tensor([0.4914, 0.4822, 0.4465])
STD = torch.tensor([0.2470, 0.2435, 0.2616])


def _known(n: int = 3) -> torch.Tensor:
    """Images whose pixel value encodes its position, so every moved pixel can be traced."""
    h = torch.arange(32)[:, None] * 7 % 256
    w = torch.arange(32)[None, :] * 3 % 256
    img = torch.stack([(h + w) % 256, (h * 2 + w) % 256, (h + 2 * w) % 256]).to(torch.uint8)
    return img.expand(n, 3, 32, 32).clone()


def _reference(img: torch.Tensor, dy: int, dx: int, flip: bool, pad: int, mode: str) -> torch.Tensor:
    padded = np.pad(img.numpy(), ((0, 0), (pad, pad), (pad, pad)), mode="reflect" if mode == "reflect" else "constant")
    out = padded[:, dy:dy + 32, dx:dx + 32]
    return torch.from_numpy(np.ascontiguousarray(out[:, :, ::-1] if flip else out))


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_crop_flip_matches_numpy_pad_then_slice(mode: str) -> None:
    imgs = _known(6)
    dy = torch.tensor([0, 8, 4, 1, 7, 4])
    dx = torch.tensor([8, 0, 4, 3, 2, 4])
    fl = torch.tensor([False, True, False, True, True, False])
    out = crop_flip(imgs, dy, dx, fl, padding=4, pad_mode=mode)
    assert out.shape == imgs.shape and out.dtype == torch.uint8
    for i in range(6):
        expected = _reference(imgs[i], int(dy[i]), int(dx[i]), bool(fl[i]), 4, mode)
        assert torch.equal(out[i], expected), f"image {i} ({mode})"


def test_centre_crop_without_flip_is_identity_and_flip_mirrors() -> None:
    imgs = _known(2)
    centre = torch.full((2,), 4)
    same = crop_flip(imgs, centre, centre, torch.tensor([False, False]), 4)
    assert torch.equal(same, imgs)
    flipped = crop_flip(imgs, centre, centre, torch.tensor([True, True]), 4)
    assert torch.equal(flipped, imgs.flip(3))


def test_zero_padding_is_black_in_pixel_space() -> None:
    imgs = torch.full((1, 3, 32, 32), 200, dtype=torch.uint8)
    out = crop_flip(imgs, torch.tensor([0]), torch.tensor([0]), torch.tensor([False]), 4, "zeros")
    assert (out[0, :, :4, :] == 0).all() and (out[0, :, :, :4] == 0).all()
    assert (out[0, :, 4:, 4:] == 200).all()


def test_normalise_uses_mean_and_std_on_a_0_1_scale() -> None:
    imgs = torch.tensor([123, 125, 114], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    x = normalise(imgs, MEAN, STD)
    expected = (torch.tensor([123, 125, 114]) / 255.0 - MEAN) / STD
    assert torch.allclose(x[0, :, 0, 0], expected, atol=1e-5)
    assert normalise(imgs, MEAN, STD, channels_last=True).is_contiguous(memory_format=torch.channels_last)


def test_cutout_zeros_exactly_the_clipped_square() -> None:
    x = torch.ones(2, 3, 32, 32)
    out = cutout(x, 8, torch.tensor([10, 0]), torch.tensor([20, 31]))
    assert (out[0, :, 6:14, 16:24] == 0).all() and out[0].sum() == 3 * (32 * 32 - 64)
    assert (out[1, :, 0:4, 27:32] == 0).all() and out[1].sum() == 3 * (32 * 32 - 4 * 5)  # clipped at corner


def test_soft_targets_and_mixup_rows_sum_to_one() -> None:
    labels = torch.tensor([0, 3, 9, 3])
    t = soft_targets(labels, 10, smoothing=0.1)
    assert torch.allclose(t.sum(1), torch.ones(4))
    assert t[1, 3].item() == pytest.approx(0.91) and t[1, 0].item() == pytest.approx(0.01)
    x = torch.randn(4, 3, 32, 32)
    partner = torch.tensor([1, 0, 3, 2])
    mx, mt = mixup(x, t, 0.7, partner)
    assert torch.allclose(mt.sum(1), torch.ones(4))
    assert torch.allclose(mx[0], 0.7 * x[0] + 0.3 * x[1])
    assert torch.allclose(mt[2], 0.7 * t[2] + 0.3 * t[3])


def test_augment_batch_shapes_determinism_and_mixup_targets() -> None:
    imgs, labels = _known(8), torch.arange(8) % 10
    cfg = AugmentConfig(crop_padding=4, flip=True, cutout=8, mixup_alpha=1.0, label_smoothing=0.1)
    g = torch.Generator()

    def run(seed: int):
        g.manual_seed(seed)
        return augment_batch(imgs, labels, cfg, MEAN, STD, 10, g, channels_last=True)

    a, b, c = run(5), run(5), run(6)
    assert a.inputs.shape == (8, 3, 32, 32) and a.inputs.dtype == torch.float32
    assert a.inputs.is_contiguous(memory_format=torch.channels_last)
    assert a.targets.shape == (8, 10) and torch.allclose(a.targets.sum(1), torch.ones(8))
    assert torch.equal(a.labels, labels)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)
    assert (a.targets.max(1).values < 0.99).any()  # mixup actually mixed


def test_shards_of_a_global_batch_see_the_single_process_crops() -> None:
    """DDP ranks draw for the whole global batch, so rank r's slice equals the single-process slice."""
    imgs, labels = _known(8), torch.arange(8)
    cfg = AugmentConfig(crop_padding=4, flip=True, cutout=6)
    g = torch.Generator()
    g.manual_seed(step_seed(0, 1, 2))
    full = augment_batch(imgs, labels, cfg, MEAN, STD, 10, g)
    for rank in range(2):
        g.manual_seed(step_seed(0, 1, 2))
        part = augment_batch(imgs, labels, cfg, MEAN, STD, 10, g, shard=rank_slice(8, rank, 2))
        assert torch.equal(part.inputs, full.inputs[rank * 4:(rank + 1) * 4])


def test_step_seeds_differ_per_step_epoch_and_seed() -> None:
    seeds = {step_seed(s, e, k) for s in range(2) for e in range(3) for k in range(-1, 5)}
    assert len(seeds) == 2 * 3 * 6
    assert step_seed(0, 0, 0) == step_seed(0, 0, 0)
