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
import os
from dataclasses import dataclass

from .calibrators import CROSS_FITTED, Calibrator
from .errors import ApertureError
from .files import WEIGHTS_FILENAME
from .registry import ModelSpec, get_spec, list_models

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
    # the card): calibrator.apply(logits) is calibrated (calibration.fit_calibrator: the kind with
    # the lowest held-out NLL, fitted by NLL on the test set, since the weights saw every training
    # image); temperature is the one-temperature fit beside it. ece_calibrated and ece_temperature
    # (%, 15 bins) are cross-fitted: fitted on one stratified half, measured on the other, both ways.
    temperature: float | None = None
    top1_tta: float | None = None         # top-1 (%) averaging the image and its mirror
    ece: float | None = None              # %, uncalibrated
    ece_calibrated: float | None = None   # %, with the calibrator (cross-fitted)
    measured_images: int = 10_000         # test images top1_tta and the ECEs were measured on (eval.json's num_images)
    corruption_top1: float | None = None  # mean top-1 (%), 5 corruptions x 5 severities, 1,000 test images each
    calibrator: Calibrator | None = None
    calibrator_tta: Calibrator | None = None   # for flip-averaged logits (the --tta flip ONNX file)
    ece_tta_calibrated: float | None = None    # %, flip TTA with calibrator_tta (cross-fitted)
    ece_temperature: float | None = None  # %, with one temperature (cross-fitted), for comparison

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


def _adaptive_spline(temperature: float, log_margin: float, entropy: float, knots: tuple[float, ...],
                     slopes: tuple[float, ...]) -> Calibrator:
    """A published calibrator: the kind ``calibration.fit_calibrator`` chose for every published model."""
    return Calibrator("adaptive-spline", temperature, weights=(("log_margin", log_margin), ("entropy", entropy)),
                      knots=knots, slopes=slopes, fitted_on=CROSS_FITTED)


_WEIGHTS: dict[str, Weights] = {
    w.tag: w
    for w in (
        # One NVIDIA H100 80GB HBM3, torch 2.11.0+cu130, the `fast` recipe on all 50,000 training images.
        Weights("resnet10.fast", "090ef93be35b7e494b478e87c58a275a1cc1e3808627d1700bf6b20914062083",
                93.75, 35, "NVIDIA H100 80GB HBM3", 29.577,
                temperature=0.6642, top1_tta=94.31, ece=8.23, ece_calibrated=1.26, corruption_top1=70.44,
                ece_temperature=1.24, ece_tta_calibrated=1.66,
                calibrator=_adaptive_spline(1.1259262, 0.04225712, -0.26830676,
                                            (1.3730807, 3.2887707, 3.9860877), (0.852388, 1.4560708, 4.0382273, 2.126143)),
                calibrator_tta=_adaptive_spline(1.1299161, 0.044864755, -0.28046796,
                                                (1.4144879, 3.3399574, 4.0315617), (0.88626463, 1.4756938, 4.3136468, 2.4684974))),
        Weights("resnet18.fast", "843e80673dfb9c1246cc4b77ba04711ef98f9c2c8e1e2eee5619382013847229",
                94.39, 35, "NVIDIA H100 80GB HBM3", 56.467,
                temperature=0.7267, top1_tta=94.74, ece=6.87, ece_calibrated=1.0, corruption_top1=72.24,
                ece_temperature=1.89, ece_tta_calibrated=0.61,
                calibrator=_adaptive_spline(1.3652653, -0.0055336579, -0.53406238,
                                            (2.1946045, 4.1520249, 4.3500652), (0.52501702, 1.6622956, 16.851415, 2.4294085)),
                calibrator_tta=_adaptive_spline(1.4008233, -0.00011686857, -0.58443518,
                                                (2.1283524, 4.1372791, 4.355565), (0.52413353, 1.7174165, 15.710421, 4.089811))),
        Weights("resnet20.fast", "58dc5b9d3a9ee1ff084dfc76280004c56c58a51e3b93f894ecb07e5380704596",
                93.85, 35, "NVIDIA H100 80GB HBM3", 51.484,
                temperature=0.7547, top1_tta=94.51, ece=7.14, ece_calibrated=0.75, corruption_top1=71.1,
                ece_temperature=2.09, ece_tta_calibrated=1.06,
                calibrator=_adaptive_spline(1.2901695, 0.020079593, -0.49510034,
                                            (2.2777005, 4.1301749, 4.3259684), (0.46938998, 1.5662508, 15.698321, 4.2263316)),
                calibrator_tta=_adaptive_spline(1.2383252, 0.040680265, -0.46129382,
                                                (2.2600528, 4.1206898, 4.3326673), (0.54556768, 1.6107291, 15.608632, 4.24847))),
        Weights("resnet22.fast", "1e6e6ed11cfc76ca90c8033bbeae69e17c5ad5c1daa6a5e99c0d28e667667e28",
                94.73, 60, "NVIDIA H100 80GB HBM3", 78.74,
                temperature=0.7481, top1_tta=95.37, ece=7.29, ece_calibrated=0.78, corruption_top1=72.58,
                ece_temperature=1.79, ece_tta_calibrated=0.63,
                calibrator=_adaptive_spline(1.5992464, -0.021622479, -0.80789283,
                                            (2.884165, 4.3255785, 4.4117146), (0.44306119, 2.2681404, 38.843436, 0.26827381)),
                calibrator_tta=_adaptive_spline(1.3975428, 0.027816105, -0.66794824,
                                                (2.7447763, 4.3242926, 4.4165139), (0.51030226, 2.2742187, 30.778391, 3.253487))),
        Weights("resnet24.fast", "9c16a48118b79f159d64730e3ab73b05b37f1e1d163af12aa5593e509a9fc395",
                94.26, 35, "NVIDIA H100 80GB HBM3", 55.28,
                temperature=0.741, top1_tta=94.47, ece=6.57, ece_calibrated=0.83, corruption_top1=72.1,
                ece_temperature=1.74, ece_tta_calibrated=1.11,
                calibrator=_adaptive_spline(1.3428839, 0.0031846209, -0.52453888,
                                            (2.2408582, 4.155972, 4.3288061), (0.55453459, 1.4276363, 21.143162, 2.2130221)),
                calibrator_tta=_adaptive_spline(1.3778378, 0.012084631, -0.58303592,
                                                (2.2586129, 4.1434362, 4.3343623), (0.5115739, 1.6599606, 20.884565, 2.8129039))),
        Weights("resnet32.fast", "32718eaac7b0d3d2d1e499b3330abcf86f4196f30995a369667566af25590df1",
                93.72, 35, "NVIDIA H100 80GB HBM3", 64.874,
                temperature=0.744, top1_tta=94.04, ece=6.93, ece_calibrated=0.84, corruption_top1=71.18,
                ece_temperature=1.9, ece_tta_calibrated=0.73,
                calibrator=_adaptive_spline(0.9320273, 0.12667762, -0.14920153,
                                            (2.0761215, 4.0714431, 4.3100599), (0.55826479, 1.3781813, 13.957418, 2.9877406)),
                calibrator_tta=_adaptive_spline(1.0135821, 0.10216068, -0.23734475,
                                                (2.0668095, 4.0354423, 4.3148139), (0.56582666, 1.4969535, 12.258494, 6.1553665))),
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


class PublishedFolderError(ApertureError, ValueError):
    """Files made from other weights would go into a folder that holds published weights."""


def published_in(folder: str | os.PathLike[str]) -> Weights | None:
    """The published record whose ``model.safetensors`` sits in ``folder``, by its bytes (not its name), or None."""
    from pathlib import Path

    from .files import file_sha256

    path = Path(folder) / WEIGHTS_FILENAME
    if not path.is_file():
        return None
    digest = file_sha256(path)
    return next((w for w in _WEIGHTS.values() if w.sha256 == digest), None)


def refuse_published_folder(folder: str | os.PathLike[str], weights_sha256: str | None,
                            what: str = "files made from your weights would sit beside them, describing weights "
                                        "they are not", error: type[ApertureError] = PublishedFolderError,
                            fix: str = "Write it elsewhere with --out DIR") -> None:
    """The one guard every writer into a folder calls before it looks at anything else there: a folder
    holding a published model's weights takes files made from those weights only (a card, an export,
    an eval or runtime matrix of other weights beside them would describe a model they are not)."""
    record = published_in(folder)
    if record is not None and weights_sha256 != record.sha256:
        raise error(f"{folder} holds the published {record.arch} weights (SHA-256 pinned in the registry); "
                    f"{what}. {fix}")


def refuse_other_weights_folder(folder: str | os.PathLike[str], weights_sha256: str | None, what: str,
                                fix: str = "Write it elsewhere with --out DIR") -> None:
    """``refuse_published_folder``, and the same for any folder whose ``model.safetensors`` holds other
    weights (another run's folder): its own eval.json or matrix would be replaced by one of other
    weights, and the run's files would then describe a model they are not."""
    from pathlib import Path

    from .files import file_sha256

    refuse_published_folder(folder, weights_sha256, what, fix=fix)
    path = Path(folder) / WEIGHTS_FILENAME
    held = file_sha256(path) if path.is_file() else None
    if held is not None and held != weights_sha256:
        raise PublishedFolderError(f"{folder} holds other weights ({WEIGHTS_FILENAME}, SHA-256 {held[:12]}..., not "
                                   f"these {(weights_sha256 or 'random')[:12]}...); {what}. {fix}")


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
