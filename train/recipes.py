"""Training recipes as data: frozen dataclasses, every field overridable, saved beside the weights.

A recipe is everything that decides the result except the model and the seed, so a run directory's
``recipe.json`` is enough to reproduce it and ``--resume`` can refuse a run trained differently.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from aperture_zoo.errors import ApertureError


class RecipeError(ApertureError, ValueError):
    """An unknown recipe, field or value; the message lists what is valid."""


@dataclass(frozen=True)
class Recipe:
    """Optimisation, schedule, augmentation and precision of one training run.

    ``lr`` is the peak learning rate for the loss averaged over the (global) batch. Schedules are a
    pure function of the global step, so resuming needs no scheduler state.

    ``lr`` is always the rate actually used. When ``reference_lr``/``reference_batch_size`` are set,
    ``lr`` follows the linear scaling rule (Goyal et al. 2017): ``replace(batch_size=B)`` sets
    ``lr = reference_lr * B / reference_batch_size``, so a smaller batch does not keep a peak rate
    tuned for a larger one. An explicit ``lr`` wins and clears both (the rule no longer applies).
    They are a record of where ``lr`` came from, not a setting: recipes that differ only in them
    train identically and compare equal.
    """

    name: str = "custom"
    epochs: int = 30
    batch_size: int = 512           # global batch (split over ranks under DDP)
    optimizer: str = "sgd"          # sgd | adadelta | adamw
    lr: float = 0.4
    momentum: float = 0.9           # sgd momentum / adamw beta1
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False  # False: no weight decay on BN parameters and biases
    schedule: str = "onecycle"      # constant | onecycle (linear warm-up, linear decay) | cosine
    warmup_fraction: float = 0.0    # linear warm-up over this fraction of all steps (scales with --epochs)
    final_lr_fraction: float = 0.0  # lr at the last step, as a fraction of the peak
    label_smoothing: float = 0.0
    crop_padding: int = 4           # random crop after padding by this many pixels (0 = off)
    pad_mode: str = "reflect"       # reflect | zeros
    flip: bool = True
    alternating_flip: bool = False  # each image mirrored on alternate epochs, random phase (airbench); needs flip
    cutout: int = 0                 # side of a zeroed square (0 = off), DeVries & Taylor 2017
    mixup_alpha: float = 0.0        # Beta(alpha, alpha) mixing weight (0 = off), Zhang et al. 2018
    ema_decay: float = 0.0          # exponential moving average of weights, evaluated and saved (0 = off)
    precision: str = "auto"         # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32 | native (bf16 where native: CUDA, AMX CPUs)
    channels_last: bool = True
    sync_bn: bool = True            # SyncBatchNorm under multi-GPU DDP (CUDA only)
    eval_every: int = 1             # test every N epochs (0 = only the final one); the final epoch is always tested
    final_tta: bool = False         # also score the final epoch with flip TTA, recorded apart (test_top1_flip_tta)
    eval_batch_size: int = 1000
    probe_head: bool = False        # with --init: fit the head to the backbone's features first (LP-FT, train/probe.py)
    probe_l2: float = 0.01          # the probe's L2 penalty (on standardised features)
    frozen_stages: int = 0          # with --init: the stem and this many first stages keep their weights (finetune.py)
    reference_lr: float | None = field(default=None, compare=False)       # lr tuned for ...
    reference_batch_size: int | None = field(default=None, compare=False)  # ... this global batch

    def replace(self, **changes: Any) -> Recipe:
        """A changed copy; a new ``batch_size`` without a new ``lr`` rescales ``lr`` (see the class)."""
        if "lr" in changes:
            changes.setdefault("reference_lr", None)
            changes.setdefault("reference_batch_size", None)
        elif "batch_size" in changes and self.reference_lr is not None and self.reference_batch_size:
            changes["lr"] = scale_lr_for_batch(self.reference_lr, self.reference_batch_size, changes["batch_size"])
        return dataclasses.replace(self, **changes)

    def differences(self, other: Recipe) -> list[str]:
        """Names of the fields that make ``other`` train differently (the ``lr`` record excluded)."""
        return [f.name for f in dataclasses.fields(self) if f.compare and getattr(self, f.name) != getattr(other, f.name)]

    def lr_note(self) -> str | None:
        """One line saying that ``lr`` was scaled with the batch size, or None when it was not."""
        if self.reference_lr is None or self.reference_batch_size == self.batch_size:
            return None
        return (f"lr {self.lr:g}: the {self.name} recipe's {self.reference_lr:g} for batch "
                f"{self.reference_batch_size}, scaled linearly to batch {self.batch_size} (--lr sets it instead)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def training_sha256(self) -> str:
        """SHA-256 of what makes this recipe train differently, lr aside (the one change a resume may make):
        a checkpoint records it, so a resume refuses a recipe.json that is not the run's own."""
        import hashlib

        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare and f.name != "lr"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """A recipe from JSON (``recipe.json``), each field checked against its type, then validated.

        A hand-edited or damaged file becomes a RecipeError naming the field, not a TypeError later.
        """
        if not isinstance(data, dict):
            raise RecipeError(f"a recipe must be a JSON object of fields, got {type(data).__name__}")
        defaults = cls()
        for key, value in data.items():
            if key not in _FIELDS:
                continue
            want = type(getattr(defaults, key))
            optional = getattr(defaults, key) is None
            ok = (value is None and optional) or isinstance(value, want) and not (want is not bool and isinstance(value, bool))
            if not ok and want is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if optional and isinstance(value, (int, float)) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise RecipeError(f"recipe field {key!r} is {value!r}; it must be {_type_name(want, optional)}")
        return cls(**{k: v for k, v in data.items() if k in _FIELDS}).validate()

    def validate(self) -> Recipe:
        """Reject values that would fail later, or worse, train silently wrong."""
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.eval_batch_size >= 1, "eval_batch_size must be >= 1"),
            (0 < self.lr < math.inf, "lr must be a finite number > 0"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (0 <= self.weight_decay < math.inf, "weight_decay must be a finite number >= 0"),
            (0 <= self.final_lr_fraction <= 1, "final_lr_fraction must be in [0, 1] (a fraction of the peak lr)"),
            (self.optimizer in ("sgd", "adadelta", "adamw"), "optimizer must be sgd, adadelta or adamw"),
            (self.schedule in ("constant", "onecycle", "cosine"), "schedule must be constant, onecycle or cosine"),
            (self.pad_mode in ("reflect", "zeros"), "pad_mode must be reflect or zeros"),
            (self.precision in ("auto", "bf16", "fp32", "native"), "precision must be auto, bf16, fp32 or native"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (0 <= self.mixup_alpha < math.inf, "mixup_alpha must be a finite number >= 0"),
            (0 <= self.crop_padding <= 16, "crop_padding must be in 0..16"),
            (0 <= self.cutout <= 32, "cutout must be in 0..32"),
            (0 <= self.warmup_fraction < 1, "warmup_fraction must be in [0, 1)"),
            (0 < self.probe_l2 < math.inf, "probe_l2 must be a finite number > 0"),
            (self.frozen_stages >= 0, "frozen_stages must be >= 0"),
            (self.eval_every >= 0, "eval_every must be >= 0 (0 = only the final epoch)"),
            (self.flip or not self.alternating_flip, "alternating_flip needs flip=true"),
            ((self.reference_lr is None) == (self.reference_batch_size is None),
             "reference_lr and reference_batch_size go together (set lr explicitly to drop both)"),
        ]
        if self.reference_lr is not None and self.reference_batch_size is not None:
            expected = scale_lr_for_batch(self.reference_lr, self.reference_batch_size, self.batch_size) \
                if self.reference_lr > 0 and self.reference_batch_size >= 1 and self.batch_size >= 1 else None
            if expected is None or abs(self.lr - expected) > 1e-9 * expected:
                checks.append((False, f"lr {self.lr:g} does not follow its reference ({self.reference_lr:g} at batch "
                                      f"{self.reference_batch_size}) at batch {self.batch_size}; change the batch "
                                      "size with Recipe.replace or apply_overrides, or set lr explicitly"))
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise RecipeError(f"invalid recipe {self.name!r}: {'; '.join(bad)}")
        return self


_FIELDS = {f.name: f for f in dataclasses.fields(Recipe)}
_RECORD = ("reference_lr", "reference_batch_size")  # provenance of lr, not settable with --set


def scale_lr_for_batch(lr: float, batch_size: int, new_batch_size: int) -> float:
    """The linear scaling rule: ``lr`` tuned for ``batch_size``, for a global batch of ``new_batch_size``.

    Rounded to 12 significant digits so recipe.json shows 0.05, not 0.05000000000000000277.
    """
    return float(f"{lr * new_batch_size / batch_size:.12g}")

# The report's Table 3: Adadelta at lr 0.1, batch 64, mixup, crop + flip, weight decay 5e-4,
# 300 epochs, no schedule. The report does not state the mixup alpha; 1.0 is Zhang et al.'s CIFAR-10
# setting. Zero padding is what torchvision's RandomCrop(32, padding=4) did in the report's code.
PAPER = Recipe(
    name="paper", epochs=300, batch_size=64, optimizer="adadelta", lr=0.1, momentum=0.0,
    nesterov=False, weight_decay=5e-4, decay_norm_and_bias=True, schedule="constant",
    mixup_alpha=1.0, pad_mode="zeros", channels_last=True,
)

# Table 1's comparison setup: Adadelta lr 0.1, batch 32, 20 epochs, crop + flip only.
TABLE1 = PAPER.replace(name="table1", epochs=20, batch_size=32, mixup_alpha=0.0, weight_decay=0.0)

# Time-to-accuracy on one GPU, after Page's DAWNBench ResNet (24 epochs to 94 %) and torchvision/
# Keller Jordan's airbench practice: SGD + Nesterov 0.9 at batch 512 with the linearly scaled lr 0.4
# (0.1 per 128), a one-cycle shape (linear warm-up over the first 1/6 = 5 of 30 epochs, linear decay to zero: the
# decay-to-zero end is what makes the *final* epoch the good one), weight decay 5e-4 on weights only,
# label smoothing 0.1, reflect-padded crop + flip + 8 px cutout, bf16 autocast, channels_last.
# 30 epochs is 1/10 of the paper's 300. Another --batch-size scales the lr by the same linear rule.
FAST = Recipe(
    name="fast", epochs=30, batch_size=512, optimizer="sgd", lr=0.4, momentum=0.9, nesterov=True,
    weight_decay=5e-4, decay_norm_and_bias=False, schedule="onecycle", warmup_fraction=1 / 6,
    final_lr_fraction=0.0, label_smoothing=0.1, crop_padding=4, pad_mode="reflect", flip=True,
    cutout=8, mixup_alpha=0.0, ema_decay=0.0, precision="auto", channels_last=True,
    reference_lr=0.4, reference_batch_size=512,
)

# Fine-tuning published weights on new images (what ``--init`` selects), LP-FT (Kumar et al. 2022):
# first the new head is fitted to the backbone's features (one bf16 forward pass where the CPU or
# GPU has it, then L-BFGS: train/probe.py), then 5 epochs train the last two stages and the head
# (the stem and the first two stages are frozen: their backward pass is skipped) at a peak lr of
# 0.02 per 128 after a 20 % warm-up, linear decay to zero; tested once, after the last epoch.
# Batch 128, crop + flip, label smoothing 0.1, no cutout. Trained under bf16 autocast where the
# hardware computes bf16 natively (precision "native": CUDA, CPUs with AMX; fp32 elsewhere) and
# tested as "auto" (fp32 on a CPU): on an AMX CPU a bf16 epoch of this recipe takes 0.22 of a
# plain fp32 epoch's compute instead of 0.55 (one thread, CPU time, batch 128).
# Chosen on the validation split only (the 10 % of each class the run holds out for calibration;
# the held-out test images played no part): on scikit-learn's digits (bench/finetune_speed.py
# --make digits: 1,295 train, 143 validation), bf16 variants of 3, 4 and 5 epochs with two stages
# frozen and 4 epochs with three scored 97.2, 97.2, 97.9 and 96.5 % on validation (5 epochs the
# highest, by one image; the CIFAR-like folder's validation also ranks 5 over 4: 95.8 and 95.0 %);
# the probe's l2 0.01 scored highest on validation of 3e-4..0.1 (bench/finetune_variants.py).
# bench/finetune_speed.py on the 2-core AMX CPU of bench/results/cpu-2core-2026-12-07 (load 4-9,
# other jobs niced): 1.76x and 1.86x a plain fp32 epoch's time with two threads (a third repeat hit
# by a load spike: 2.93x), 1.52-1.64x with one, held-out top-1 98.1 % (the 10-epoch fp32 recipe in
# the same run: 97.8 %, 8.7x); README "Your own images".
FINETUNE = FAST.replace(
    name="finetune", epochs=5, batch_size=128, lr=0.02, warmup_fraction=0.2, cutout=0, eval_every=0,
    probe_head=True, frozen_stages=2, precision="native",
).replace(reference_lr=0.02, reference_batch_size=128)


def _type_name(kind: type, optional: bool) -> str:
    name = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(kind, kind.__name__)
    return f"{name} or null" if optional else name



# The best final-epoch accuracy the fixed architectures can reach in one long run, after the Cutout
# paper's ResNet-18 setting (DeVries & Taylor 2017, uoguelph-mlrg/Cutout: SGD + Nesterov 0.9, lr 0.1
# at batch 128, weight decay 5e-4, 200 epochs, 16-px cutout with crop + flip: 96.01 %, mean of 5).
# Their lr 0.1 per 128 is 0.4 at our batch 512 by the linear rule. Their step decay (lr / 5 at epochs
# 60, 120, 160) becomes a cosine to zero: it ends at lr 0, which makes the *final* epoch the good one,
# and needs no milestones retuned for 180 epochs (Loshchilov & Hutter 2017 found it at least as good);
# a 5-epoch linear warm-up (Goyal et al. 2017) covers the 4x larger batch. 180 epochs rather than
# 200: about 4 minutes for resnet22 at the 40,000 images/s the `fast` runs sustained on an H100.
# Label smoothing 0.1 as in `fast` (its published runs used it; no other value has been compared
# yet). EMA of the weights (decay 0.999: a horizon of about ten epochs at 97 steps each) is what is
# evaluated, every 5 epochs, and saved (Page's "bag of tricks": +0.2 pt); the final epoch is also
# scored with flip TTA, recorded beside (never instead of) the plain final-epoch top-1. Not yet run
# on a GPU.
LONG = FAST.replace(
    name="long", epochs=180, schedule="cosine", warmup_fraction=5 / 180, cutout=16, ema_decay=0.999,
    eval_every=5, final_tta=True,
)

# Time to 94 % on one GPU, after airbench94 (Jordan 2024): batch 1024 (lr 0.8 by the linear rule
# from `fast`'s 0.4 at 512) on `fast`'s one-cycle shape, alternating flip (each image mirrored on
# alternate epochs instead of by a coin: airbench reports about 10 % fewer steps for the same
# accuracy), label smoothing 0.2 (airbench94's),
# no evaluation until the final epoch (each one costs a pass over 10,000 images), and the final epoch
# also scored with flip TTA (recorded apart). 24 epochs follows Page's DAWNBench ResNet (24 epochs to
# 94 %); `--set epochs=N` is the knob the GPU measures. Not yet run on a GPU.
SPRINT = FAST.replace(
    name="sprint", epochs=24, batch_size=1024, label_smoothing=0.2, alternating_flip=True, eval_every=0,
    final_tta=True,
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (FAST, LONG, SPRINT, PAPER, TABLE1, FINETUNE)}


MIN_STEPS_PER_EPOCH = 4  # a small folder's default batch shrinks to give at least this many steps an epoch


def fit_to_data(recipe: Recipe, n_train: int) -> tuple[Recipe, str | None]:
    """``recipe`` with its default batch shrunk for a small training set, and the sentence that says so.

    A batch left at its recipe's own size becomes the largest power of two that gives at least
    ``MIN_STEPS_PER_EPOCH`` steps an epoch (never more than the images), and the lr follows it by the
    recipe's linear rule (an lr given explicitly stays). A batch set to anything else is the user's:
    unchanged (the loader then refuses one larger than the training set).
    """
    named = RECIPES.get(recipe.name)
    if named is None or recipe.batch_size != named.batch_size or n_train >= MIN_STEPS_PER_EPOCH * recipe.batch_size:
        return recipe, None
    batch = 1 << (max(n_train // MIN_STEPS_PER_EPOCH, 1).bit_length() - 1)
    fitted = recipe.replace(batch_size=batch).validate()
    lr = (f"lr {recipe.lr:g} -> {fitted.lr:g} (scaled with the batch)" if fitted.lr != recipe.lr
          else f"lr {fitted.lr:g} (as given)")
    return fitted, (f"{n_train} training images: batch size {recipe.batch_size} -> {batch} (at least "
                    f"{MIN_STEPS_PER_EPOCH} steps an epoch), {lr}; set --batch-size to choose")


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        close = difflib.get_close_matches(name, RECIPES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RecipeError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}.{hint}") from None


def _coerce(key: str, raw: str) -> Any:
    kind = _FIELDS[key].type
    text = raw.strip()
    try:
        if kind in ("bool", bool):
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind in ("int", int):
            return int(text)
        if kind in ("float", float):
            return float(text)
    except ValueError:
        name = {"bool": "true or false", "int": "an integer", "float": "a number"}.get(getattr(kind, "__name__", str(kind)), str(kind))
        raise RecipeError(f"--set {key}={raw}: expected {name}") from None
    return text


def apply_overrides(recipe: Recipe, overrides: dict[str, Any] | list[str] | None) -> Recipe:
    """``recipe`` with fields replaced; strings ``key=value`` (from ``--set``) are parsed by type.

    Goes through ``Recipe.replace``, so a new ``batch_size`` scales ``lr`` unless ``lr`` is among the
    overrides: ``aperture train --batch-size``, ``--set batch_size=`` and ``train-zoo`` agree.
    """
    if not overrides:
        return recipe.validate()
    if isinstance(overrides, list):
        parsed: dict[str, Any] = {}
        for item in overrides:
            if "=" not in item:
                raise RecipeError(f"--set {item!r}: expected key=value, e.g. --set label_smoothing=0.1")
            key, value = item.split("=", 1)
            key = key.strip().replace("-", "_")
            _check_key(key)
            parsed[key] = _coerce(key, value)
        overrides = parsed
    for key in overrides:
        _check_key(key)
    return recipe.replace(**overrides).validate()


def _check_key(key: str) -> None:
    if key not in _FIELDS or key == "name" or key in _RECORD:
        settable = [k for k in _FIELDS if k != "name" and k not in _RECORD]
        close = difflib.get_close_matches(key, settable, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        valid = ", ".join(settable)
        raise RecipeError(f"unknown recipe field {key!r}.{hint} Valid fields: {valid}")
