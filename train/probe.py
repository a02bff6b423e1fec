"""LP-FT's first half: the head fitted to the pretrained backbone's features before any weight moves.

A fine-tune that starts from a random head spends its first epochs moving the backbone to fit that
head, distorting the very features it came for (Kumar et al. 2022, "Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution"). Fitting the head first as a linear
probe costs one forward pass over the training images and a convex fit of well under a second, and
lets a short fine-tune start where a long one ends up (the ``finetune`` recipe: 5 epochs, not 10).

The pass runs with BatchNorm in training mode over shuffled batches and cumulative statistics: the
features are the ones the first training steps see, and the running statistics it leaves are the
new images' (AdaBN, Li et al. 2016), not the source data's. A frozen backbone keeps its statistics
(``--freeze-backbone``: its BatchNorm stays in eval mode). The pass uses bf16 where the hardware
computes it natively (``aperture_zoo.device.inference_dtype``); the fit is in float32.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import normalise
from .finetune import ADAPTING
from .loader import DeviceData
from .recipes import Recipe
from .state import RunState

FEATURE_BATCH = 256  # images per forward pass: large enough for BatchNorm's batch statistics
MAX_ITER = 500       # L-BFGS iterations; a few dozen usually suffice


@dataclass(frozen=True)
class Probe:
    """What the probe did, for ``run.json`` and the weights' metadata."""

    images: int
    feature_seconds: float
    fit_seconds: float
    iterations: int
    train_top1: float    # the probed head on the pass's features, percent
    l2: float
    precision: str       # of the feature pass: bf16 or fp32
    adapted_bn: bool     # BatchNorm statistics re-estimated on the new images

    def record(self) -> dict[str, Any]:
        return {"images": self.images, "feature_seconds": round(self.feature_seconds, 3),
                "fit_seconds": round(self.fit_seconds, 3), "iterations": self.iterations,
                "train_top1": round(self.train_top1, 4), "l2": self.l2, "precision": self.precision,
                "adapted_bn": self.adapted_bn}


@torch.no_grad()
def pooled_features(model: nn.Module, images: Tensor, mean: Tensor, std: Tensor, *, adapt_bn: bool, seed: int,
                    dtype: torch.dtype | None = None, channels_last: bool = False,
                    batch_size: int = FEATURE_BATCH) -> Tensor:
    """float32 N x D pooled features of uint8 ``images``; with ``adapt_bn`` BatchNorm learns their statistics.

    Batches are drawn in a seeded random order: a folder's images come sorted by class, and batch
    statistics of one class would carry the label into every feature. The images are not augmented:
    a head fitted to cropped and flipped images scored worse on held-out ones after the fine-tune.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if adapt_bn else []
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the whole pass
        setattr(m, ADAPTING, True)  # frozen stages too: they keep the statistics learnt here
    was_training = model.training
    model.train(adapt_bn)
    n, dev = images.shape[0], images.device
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(dev)
    out: Tensor | None = None
    try:
        for idx in order.tensor_split(max(1, -(-n // batch_size))):  # even batches: no tiny last one
            x = normalise(images[idx], mean, std, channels_last)
            with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                f = torch.flatten(model.avgpool(model.forward_features(x)), 1).float()
            if out is None:
                out = torch.empty(n, f.shape[1], device=dev)
            out[idx] = f
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
            delattr(m, ADAPTING)
        model.train(was_training)
    assert out is not None
    return out


def fit_linear(features: Tensor, labels: Tensor, num_classes: int, l2: float, smoothing: float = 0.0,
               max_iter: int = MAX_ITER) -> tuple[Tensor, Tensor, int]:
    """Multinomial logistic regression by L-BFGS: (weight K x D, bias K, iterations) for raw ``features``.

    The fit runs on standardised features (L-BFGS converges in far fewer steps) with ``l2`` on
    their weights, and the standardisation is folded back into the returned head. L-BFGS on the
    full batch rather than SGD: the problem is convex and small, so it is solved, not approximated.
    """
    f = features.float()
    mu = f.mean(0)
    sd = f.std(0)
    sd = sd.clamp_min(1e-3 * float(sd.mean()) + 1e-12)  # features that never fire stay finite
    z = (f - mu) / sd
    w = torch.zeros(num_classes, f.shape[1], device=f.device, requires_grad=True)
    b = torch.zeros(num_classes, device=f.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, labels, label_smoothing=smoothing) + 0.5 * l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    iterations = int(opt.state[w].get("n_iter", 0))
    weight = (w / sd).detach()
    return weight, (b - weight @ mu).detach(), iterations


def probe_head(model: nn.Module, images: Tensor, labels: Tensor, mean: Tensor, std: Tensor, *, l2: float,
               adapt_bn: bool, seed: int, dtype: torch.dtype | None = None, channels_last: bool = False,
               smoothing: float = 0.0) -> Probe:
    """Set ``model.fc`` to the linear probe of its backbone's features on ``images``; what was done."""
    start = time.perf_counter()
    features = pooled_features(model, images, mean, std, adapt_bn=adapt_bn, seed=seed, dtype=dtype,
                               channels_last=channels_last)
    if features.device.type == "cuda":
        torch.cuda.synchronize(features.device)
    fitted = time.perf_counter()
    head: nn.Linear = model.fc  # type: ignore[assignment]
    threads = torch.get_num_threads()
    if features.device.type == "cpu":  # small ops: one thread, no barrier waits (3-8 s -> 0.2 s on a busy 2-core CPU)
        torch.set_num_threads(1)
    try:
        weight, bias, iterations = fit_linear(features, labels, head.out_features, l2, smoothing)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
        top1 = 100.0 * float(((features @ weight.T + bias).argmax(1) == labels).float().mean())
    return Probe(int(images.shape[0]), fitted - start, time.perf_counter() - fitted, iterations, top1, l2,
                 "bf16" if dtype == torch.bfloat16 else "fp32", adapt_bn)


def probe_run(recipe: Recipe, record: dict[str, Any], state: RunState, data: DeviceData, device: torch.device,
              show: bool = True) -> dict[str, Any]:
    """A new fine-tune's probe (``recipe.probe_head``): its time counted in the run's, a line said; its record."""
    from aperture_zoo.device import inference_dtype
    from aperture_zoo.terminal import say  # the product's one way to the terminal

    probe = probe_head(state.model, data.train.images, data.train.labels, data.mean, data.std, l2=recipe.probe_l2,
                       adapt_bn=not record.get("freeze_backbone"), seed=int(record["seed"]),
                       dtype=inference_dtype(device), channels_last=recipe.channels_last,
                       smoothing=recipe.label_smoothing)
    if state.ema is not None:  # --ema: the average starts from the probed head and adapted statistics
        state.ema.model.load_state_dict(state.model.state_dict())
    state.add_time(wall=probe.feature_seconds + probe.fit_seconds)
    if show:
        say(f"probe: head fitted to the features of {probe.images} training images in "
            f"{probe.feature_seconds + probe.fit_seconds:.1f}s ({probe.precision} pass, {probe.iterations} L-BFGS "
            f"steps), train top-1 {probe.train_top1:.1f}%")
    return probe.record()
