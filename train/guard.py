"""When a run stops itself instead of saying "done": a loss that is not finite or explodes, or no learning.

Three rules, each judged on figures the loop already has (no extra host sync):

- **non-finite**: the epoch's running mean training loss is nan or inf (read a few times a second);
- **exploding**: that mean is above ``LOSS_FACTOR`` x ln(classes), and at least ``LOSS_FLOOR``. A
  network that guesses uniformly scores ln(classes) (2.3 for ten), and a fresh head starts there;
  ten times that is a confidently wrong network whose weights are running away (a diverged run
  went to 439,099), never a slow start;
- **at chance**: from epoch ``max(3, epochs // 3)`` on (runs of fewer than 3 epochs are too short
  to judge, except at their last epoch when they began from a probed head: ``train/probe.py``
  already fitted it above chance, so a fine-tune that ends at chance has destroyed it), an epoch's training top-1 within ``CHANCE_MARGIN`` of the way from "always the most
  frequent class" to 100 %: the network has learnt nothing its labels could teach;
- **broken in eval mode**: from that epoch on, a test (or validation) loss above the loss limit.
  Training-mode figures use the batch's own statistics; a run whose BatchNorm running statistics
  blew up trains "fine" while the weights it would write answer nonsense.

The loop raises ``TrainingDiverged`` with the rule that fired; the last good checkpoint stays, and
the command line says how to resume it with a lower learning rate.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

LOSS_FACTOR = 10.0
LOSS_FLOOR = 10.0
CHANCE_MARGIN = 0.05
CHANCE_FROM_EPOCH = 3


def loss_limit(num_classes: int) -> float:
    """The mean training loss above which a run has exploded."""
    return max(LOSS_FLOOR, LOSS_FACTOR * math.log(max(num_classes, 2)))


def loss_problem(mean_loss: float, num_classes: int) -> str | None:
    """What is wrong with an epoch's running mean loss (for "the training ... in epoch N"), or None."""
    if math.isnan(mean_loss) or math.isinf(mean_loss):
        return f"loss became {'nan' if math.isnan(mean_loss) else 'inf'}"
    limit = loss_limit(num_classes)
    if mean_loss > limit:
        return (f"loss exploded to {mean_loss:,.6g} (the limit is {limit:.3g}: {LOSS_FACTOR:g} x the "
                f"{math.log(max(num_classes, 2)):.3g} of a uniform guess, at least {LOSS_FLOOR:g})")
    return None


def majority_share(labels: np.ndarray) -> float:
    """The training top-1 of always answering the most frequent class, in percent."""
    labels = np.asarray(labels)
    return 100.0 * float(np.bincount(labels).max()) / max(len(labels), 1)


def epoch_problem(row: dict[str, Any], epochs: int, majority_pct: float, num_classes: int,
                  probed: bool = False) -> str | None:
    """What is wrong with a finished epoch's row (1-based ``epoch``, ``train_top1``, any ``*_loss``), or None.

    ``probed``: the run began from a head fitted to its features, so even a short run's last epoch is judged.
    """
    epoch = int(row["epoch"])
    short_end = probed and epochs < CHANCE_FROM_EPOCH and epoch == epochs
    if not short_end and (epochs < CHANCE_FROM_EPOCH or epoch < max(CHANCE_FROM_EPOCH, epochs // 3)):
        return None
    ceiling = majority_pct + CHANCE_MARGIN * (100.0 - majority_pct)
    if row["train_top1"] <= ceiling:
        return (f"top-1 is still at chance after {epoch} epochs ({row['train_top1']:.1f}%; always answering the most "
                f"frequent class scores {majority_pct:.1f}%, and {ceiling:.1f}% or less counts as chance)")
    limit = loss_limit(num_classes)
    for key in ("test_loss", "val_loss"):
        value = row.get(key)
        if value is not None and not value <= limit:  # nan too
            return (f"run's weights give a {key.split('_')[0]} loss of {value:,.6g} in eval mode after {epoch} epochs "
                    f"(above the limit of {limit:.3g}: their BatchNorm statistics have blown up)")
    return None
