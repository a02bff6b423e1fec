"""Published weights as records of their own, apart from the architectures they fit.

Like torchvision's ``Weights`` (``models/_api.py``) and timm's ``arch.tag`` pretrained configs: one
frozen record per published file, naming its architecture, where it is published, its SHA-256
pin and what it was measured to do. ``load("resnet22", pretrained=True)`` takes the architecture's
default tag; ``load("resnet22.fast")`` names one. A record's figures are copied from the file's own
metadata when it is published, and the test suite checks them against the file, so they cannot
drift apart. Pure Python: listing needs no torch.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from .errors import ApertureError
from .registry import ModelSpec, get_spec, list_models

from .files import WEIGHTS_FILENAME
DEFAULT_HUB_ORG = "aperture-zoo"


class UnknownWeightsError(ApertureError, KeyError):
    """A weights tag that is not published; the message lists those that are."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Weights:
    """One published ``model.safetensors``: identity, pin and final-epoch record."""

    tag: str                  # "<arch>.<recipe>", e.g. "resnet22.fast"
    sha256: str               # of model.safetensors: a file with another digest is never loaded
    top1: float               # final-epoch CIFAR-10 test top-1 (%), all 10,000 test images
    epochs: int
    train_device: str
    wall_time_s: float
    hub_repo: str | None = None   # None: $APERTURE_HUB_ORG/<arch> (default org aperture-zoo)
    revision: str | None = None   # a pinned Hub commit, when one is known
    config_sha256: str | None = None  # of config.json at ``revision``, when pinned too
    filename: str = WEIGHTS_FILENAME
    dataset: str = "cifar10"
    license: str = "mit"
    # Calibration and test-time augmentation, measured on all 10,000 test images (eval.json beside
    # the card): softmax(logits / temperature) is calibrated. The temperature is fitted by NLL on
    # the test set (the weights saw every training image); ece_calibrated (%, 15 bins) is
    # cross-fitted: fitted on one stratified half, measured on the other, both ways.
    temperature: float | None = None
    top1_tta: float | None = None         # top-1 (%) averaging the image and its mirror
    ece: float | None = None              # %, before the temperature
    ece_calibrated: float | None = None   # %, after (cross-fitted)
    measured_images: int = 10_000         # test images top1_tta and the ECEs were measured on (eval.json's num_images)
    corruption_top1: float | None = None  # mean top-1 (%), 5 corruptions x 5 severities, 1,000 test images each

    @property
    def arch(self) -> str:
        return self.tag.split(".", 1)[0]

    @property
    def recipe(self) -> str:
        return self.tag.split(".", 1)[1]

    @property
    def spec(self) -> ModelSpec:
        """Architecture, parameter count, mean/std and label names (the record does not repeat them)."""
        return get_spec(self.arch)

    def transforms(self):  # type: ignore[no-untyped-def]
        """``images -> normalised tensor`` for this model, like torchvision's ``weights.transforms()``."""
        from functools import partial

        from .transforms import preprocess

        return partial(preprocess, model=self.spec)


_WEIGHTS: dict[str, Weights] = {
    w.tag: w
    for w in (
        # One NVIDIA H100 80GB HBM3, torch 2.11.0+cu130, the `fast` recipe on all 50,000 training images.
        Weights("resnet10.fast", "090ef93be35b7e494b478e87c58a275a1cc1e3808627d1700bf6b20914062083",
                93.75, 35, "NVIDIA H100 80GB HBM3", 29.577,
                temperature=0.6642, top1_tta=94.31, ece=8.23, ece_calibrated=1.24, corruption_top1=70.44),
        Weights("resnet18.fast", "843e80673dfb9c1246cc4b77ba04711ef98f9c2c8e1e2eee5619382013847229",
                94.39, 35, "NVIDIA H100 80GB HBM3", 56.467,
                temperature=0.7267, top1_tta=94.74, ece=6.87, ece_calibrated=1.89, corruption_top1=72.24),
        Weights("resnet20.fast", "58dc5b9d3a9ee1ff084dfc76280004c56c58a51e3b93f894ecb07e5380704596",
                93.85, 35, "NVIDIA H100 80GB HBM3", 51.484,
                temperature=0.7547, top1_tta=94.51, ece=7.14, ece_calibrated=2.09, corruption_top1=71.1),
        Weights("resnet22.fast", "1e6e6ed11cfc76ca90c8033bbeae69e17c5ad5c1daa6a5e99c0d28e667667e28",
                94.73, 60, "NVIDIA H100 80GB HBM3", 78.74,
                temperature=0.7481, top1_tta=95.37, ece=7.29, ece_calibrated=1.79, corruption_top1=72.58),
        Weights("resnet24.fast", "9c16a48118b79f159d64730e3ab73b05b37f1e1d163af12aa5593e509a9fc395",
                94.26, 35, "NVIDIA H100 80GB HBM3", 55.28,
                temperature=0.741, top1_tta=94.47, ece=6.57, ece_calibrated=1.74, corruption_top1=72.1),
        Weights("resnet32.fast", "32718eaac7b0d3d2d1e499b3330abcf86f4196f30995a369667566af25590df1",
                93.72, 35, "NVIDIA H100 80GB HBM3", 64.874,
                temperature=0.744, top1_tta=94.04, ece=6.93, ece_calibrated=1.9, corruption_top1=71.18),
    )
}
_DEFAULT_TAG: dict[str, str] = {name: f"{name}.fast" for name in list_models()}


def list_pretrained(pattern: str = "*") -> list[str]:
    """Published tags matching an fnmatch pattern: ``list_pretrained("resnet2*")``."""
    return sorted(t for t in _WEIGHTS if fnmatch.fnmatchcase(t, pattern))


def get_weights(name: str) -> Weights:
    """The record for a tag (``"resnet22.fast"``) or an architecture's default (``"resnet22"``)."""
    tag = _DEFAULT_TAG.get(name, name)
    try:
        return _WEIGHTS[tag]
    except KeyError:
        raise UnknownWeightsError(
            f"no published weights {name!r}; published: {', '.join(_WEIGHTS) or 'none'}"
        ) from None


def find_weights(name: str) -> Weights | None:
    """Like ``get_weights`` but None for an architecture with nothing published (unknown names still fail)."""
    if "." not in name:
        get_spec(name)
    try:
        return get_weights(name)
    except UnknownWeightsError:
        if "." in name:
            raise
        return None


def register_weights(weights: Weights, *, default: bool = False, overwrite: bool = False) -> Weights:
    """Add a record (e.g. a fine-tuned variant); ``default`` makes it what ``load(arch)`` takes."""
    get_spec(weights.arch)
    if weights.tag in _WEIGHTS and not overwrite:
        raise ValueError(f"weights {weights.tag!r} are already registered; pass overwrite=True")
    _WEIGHTS[weights.tag] = weights
    if default:
        _DEFAULT_TAG[weights.arch] = weights.tag
    return weights


def default_repo_id(arch: str) -> str:
    """``$APERTURE_HUB_ORG/<arch>`` (default org ``aperture-zoo``): where unpinned records are published."""
    import os

    return f"{os.environ.get('APERTURE_HUB_ORG') or DEFAULT_HUB_ORG}/{arch}"


def hub_location(weights: Weights) -> tuple[str, str | None]:
    """(repo id, pinned revision or None) of a record."""
    return weights.hub_repo or default_repo_id(weights.arch), weights.revision


def by_repo(repo_id: str, revision: str | None = None) -> Weights | None:
    """The record published at ``repo_id`` (at ``revision`` when both name one), to pin an ``hf-hub:`` source."""
    for w in _WEIGHTS.values():
        repo, pinned = hub_location(w)
        if repo == repo_id and (revision is None or pinned is None or revision == pinned):
            return w
    return None
