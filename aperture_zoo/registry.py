"""The zoo's architectures as data: the report's Table 1, one frozen spec per model.

Kept free of torch so that listing models, CLI help and torch-free ONNX inference stay cheap.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
import math
from dataclasses import dataclass
from typing import Any

from .errors import ApertureError

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
# Per-channel statistics of the 50,000 CIFAR-10 training images on a 0-1 scale.
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

MAX_PARAMS = 500_000_000  # far above the zoo (< 5 M), far below what a spec can make a machine allocate
REPORT = "Sudrik, Nagula, Oza: Residual Network Design Mini-Project (Table 1)"


class UnknownModelError(ApertureError, KeyError):
    """Raised for a name that is not in the registry; the message suggests close matches."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class NoMatchingModelError(ApertureError, LookupError):
    """A wildcard pattern that selects no registered model."""


class SpecError(ApertureError, ValueError):
    """An architecture that cannot be built (mismatched lengths, even kernels, ...)."""


class UnknownSpecFieldError(SpecError, TypeError):
    """``replace()`` with a field a spec does not have (a TypeError, like an unknown keyword)."""


@dataclass(frozen=True)
class ModelSpec:
    """Hyper-parameters of one ResNet, in the report's notation (N, B, C, F, K, P).

    `report_params` is Table 1's parameter count: building the model must reproduce it exactly.
    `report_top1_20ep` is Table 1's 20-epoch test accuracy when we have it from the report; None
    means we do not, and nothing is invented in its place.
    """

    name: str
    blocks: tuple[int, ...]          # B_i, residual blocks per stage
    channels: tuple[int, ...]        # C_i, channels per stage
    conv_kernel: int = 3             # F, kernel of the block convolutions
    shortcut_kernel: int = 1         # K, kernel of the projection shortcut
    pool_kernel: int = 4             # P, average-pool kernel before the head
    num_classes: int = 10
    input_size: tuple[int, int, int] = (3, 32, 32)
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    report_params: int | None = None
    report_top1_20ep: float | None = None
    class_names: tuple[str, ...] | None = None  # a dataset's own classes (None: CIFAR-10's, or class_i)

    def __post_init__(self) -> None:
        self._check_types()
        if len(self.blocks) != len(self.channels):
            raise SpecError(
                f"{self.name}: blocks {self.blocks} and channels {self.channels} must have one "
                "entry per stage"
            )
        if not self.blocks or min(self.blocks) < 1 or min(self.channels) < 1:
            raise SpecError(f"{self.name}: every stage needs >= 1 block and >= 1 channel")
        if self.num_classes < 0:  # 0: no head, the model returns pooled features (timm's convention)
            raise SpecError(f"{self.name}: num_classes must be >= 0, got {self.num_classes}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise SpecError(f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes")
        if self.conv_kernel % 2 == 0 or self.shortcut_kernel % 2 == 0:
            raise SpecError(f"{self.name}: kernels must be odd to keep 'same' padding")
        side = self.input_size[1] // 2 ** (len(self.blocks) - 1)
        if side % self.pool_kernel:
            raise SpecError(
                f"{self.name}: the last stage is {side}x{side}, which pool kernel "
                f"{self.pool_kernel} does not divide"
            )

    def _check_types(self) -> None:
        """Specs come from outside too (config.json, file metadata, --arch): wrong types or sizes are one line."""
        def whole(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        seqs = {"blocks": self.blocks, "channels": self.channels, "input_size": self.input_size}
        for key, value in seqs.items():
            if not isinstance(value, tuple) or not all(whole(v) for v in value):
                raise SpecError(f"{self.name}: {key} must be a list of integers, got {value!r}")
        for key in ("conv_kernel", "shortcut_kernel", "pool_kernel", "num_classes"):
            value = getattr(self, key)
            top = 100_000 if key == "num_classes" else 15
            low = 1 if key != "num_classes" else -(2**63)  # num_classes < 1 has its own message below
            if not whole(value) or not low <= value <= top:
                raise SpecError(f"{self.name}: {key} must be an integer up to {top}"
                                f"{'' if key == 'num_classes' else ' and at least 1'}, got {value!r}")
        if len(self.input_size) != 3 or not all(0 < v <= 4096 for v in self.input_size) or not self.blocks:
            raise SpecError(f"{self.name}: input_size must be C, H, W in 1..4096, got {self.input_size!r}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if not isinstance(value, tuple) or len(value) != self.input_size[0] or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
                raise SpecError(f"{self.name}: {key} must be {self.input_size[0]} finite numbers, got {value!r}")
        if min(self.std) <= 0:
            raise SpecError(f"{self.name}: std must be positive, got {self.std!r}")
        problem = _pixel_scale_problem(self.mean, self.std)
        if problem:
            raise SpecError(f"{self.name}: {problem}")
        if self.class_names is not None:
            problem = class_names_problem(self.class_names)
            if problem:
                raise SpecError(f"{self.name}: {problem}")
        # An estimate (3x3 convolutions), so that a typo or hostile file cannot ask for terabytes.
        estimate = sum(2 * b * self.conv_kernel ** 2 * c * c for b, c in zip(self.blocks, self.channels))
        if estimate > MAX_PARAMS:
            raise SpecError(f"{self.name}: blocks {list(self.blocks)} and channels {list(self.channels)} would need "
                            f"~{estimate:,} parameters, more than the {MAX_PARAMS:,} this library builds; use smaller ones")

    @property
    def num_stages(self) -> int:
        """N in the report."""
        return len(self.blocks)

    @property
    def depth(self) -> int:
        """Weighted layers: the stem, two convolutions per block, the head."""
        return 2 * sum(self.blocks) + 2

    @property
    def label_names(self) -> tuple[str, ...]:
        if self.class_names is not None:
            return self.class_names
        return CIFAR10_CLASSES if self.num_classes == 10 else tuple(
            f"class_{i}" for i in range(self.num_classes)
        )

    def replace(self, **overrides: Any) -> ModelSpec:
        """A new spec with some fields changed; provenance tied to the original is dropped."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UnknownSpecFieldError(
                f"unknown spec field(s) {sorted(unknown)}; valid: "
                f"{[f.name for f in dataclasses.fields(self)]}"
            )
        for key in ("blocks", "channels", "input_size", "mean", "std", "class_names"):
            if key in overrides and overrides[key] is not None:
                if not isinstance(overrides[key], (list, tuple)):
                    raise SpecError(f"{self.name}: {key} must be a list, got {overrides[key]!r}")
                overrides[key] = tuple(overrides[key])
        if "num_classes" in overrides and "class_names" not in overrides and self.class_names is not None \
                and overrides["num_classes"] != self.num_classes:
            overrides["class_names"] = None  # another head: the old names no longer apply
        changes_arch = any(
            k not in ("name", "mean", "std", "class_names") and overrides[k] != getattr(self, k) for k in overrides
        )
        if changes_arch:
            overrides.setdefault("report_params", None)
            overrides.setdefault("report_top1_20ep", None)
        return dataclasses.replace(self, **overrides)

    def arch_dict(self) -> dict[str, Any]:
        """The fields that define the network (what a checkpoint must match)."""
        return {
            "name": self.name,
            "blocks": list(self.blocks),
            "channels": list(self.channels),
            "conv_kernel": self.conv_kernel,
            "shortcut_kernel": self.shortcut_kernel,
            "pool_kernel": self.pool_kernel,
            "num_classes": self.num_classes,
            "input_size": list(self.input_size),
        }

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        if not isinstance(data, dict):
            raise SpecError(f"a model spec must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if not isinstance(kwargs.get("name", ""), str):
            raise SpecError(f"a model spec's name must be a string, got {kwargs['name']!r}")
        for key in ("blocks", "channels", "input_size", "mean", "std", "class_names"):
            if kwargs.get(key) is not None:
                if not isinstance(kwargs[key], (list, tuple)):
                    raise SpecError(f"{key} must be a list, got {kwargs[key]!r}")
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def _csv(values: Any) -> str:
    return ",".join(f"{v:.4g}" for v in values)


def _pixel_scale_problem(mean: tuple[float, ...], std: tuple[float, ...]) -> str | None:
    """Every model normalises pixels already scaled to [0, 1]: a mean or std outside that range (most often
    written in 0-255 units, as torchvision's Normalize on uint8 tensors takes them) maps every image to about
    one constant, a wrong answer for every input that nothing downstream notices."""
    out = {k: v for k, v in (("mean", mean), ("std", std)) if not all(0 <= x <= 1 for x in v)}
    if not out:
        return None
    shown = " and ".join(f"{k} {_csv(v)}" for k, v in out.items())
    if all(0 <= x <= 255 for v in out.values() for x in v):
        fix = " ".join(f"{k} {_csv(x / 255 for x in v)}" for k, v in out.items())
        return (f"mean/std are for pixels in [0, 1]: {shown} look{'s' if len(out) == 1 else ''} like 0-255 units; "
                f"divide by 255: {fix}")
    return f"mean/std are for pixels in [0, 1], so mean lies in [0, 1] and std in (0, 1]; got {shown}"


# Cyrillic and Greek letters that look like Latin ones (from Unicode's confusables.txt; a package for
# 48 characters would be one more dependency of every install).
_LOOKALIKE = str.maketrans(
    "\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0456\u0458\u0455\u0501\u04cf\u051b\u051d\u0410\u0412"
    "\u0415\u041a\u041c\u041d\u041e\u0420\u0421\u0422\u0425\u0423\u0406\u0408\u0405\u03bf\u03b1\u03bd"
    "\u03c1\u03b9\u0391\u0392\u0395\u0396\u0397\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4\u03a5\u03a7",
    "aeopcyxijsdlqwABEKMHOPCTXYIJSoavpiABEZHIKMNOPTYX")


def _reading(name: str) -> str:
    """A name as a reader sees it: NFKC, invisible format characters (zero-width space, joiners, marks of direction)
    dropped, and Cyrillic/Greek lookalikes read as Latin."""
    import unicodedata

    visible = "".join(c for c in unicodedata.normalize("NFKC", name) if unicodedata.category(c) != "Cf")
    return visible.translate(_LOOKALIKE)


def normalisation_twins(names: tuple[str, ...]) -> list[tuple[str, str]]:
    """Pairs of class names that read as one: equal once NFKC-normalised (``caf\\xe9``, ``cafe\\u0301``,
    full-width letters) with Cyrillic and Greek lookalikes read as Latin (``cat``, ``c\\u0430t``)."""
    import unicodedata

    first: dict[str, str] = {}
    twins: list[tuple[str, str]] = []
    for name in names:
        key = _reading(name)
        if key in first:
            twins.append((first[key], name))
        else:
            first[key] = name
    return twins


def how_alike(a: str, b: str, what: str = "class names", where: str = "") -> str:
    """Why two names read as one, in words (for the messages that refuse them); ``where`` follows the pair."""
    import unicodedata

    if a == b:
        return f"{what[:-1]} {ascii(a)}{where} appears twice"
    pair = f"{what} {ascii(a)} and {ascii(b)}{where}"
    if unicodedata.normalize("NFKC", a) == unicodedata.normalize("NFKC", b):
        return f"{pair} are one name in two Unicode forms (equal after NFKC normalisation)"
    hidden = next((c for c in a + b if unicodedata.category(c) == "Cf"), None)
    if hidden is not None:
        return f"{pair} look alike (U+{ord(hidden):04X} {unicodedata.name(hidden, '?')} is invisible)"
    odd = next(c for c in a + b if c.translate(_LOOKALIKE) != c)
    return f"{pair} look alike (U+{ord(odd):04X} {unicodedata.name(odd, '?')} looks like {odd.translate(_LOOKALIKE)!r})"


def class_names_problem(names: tuple[Any, ...]) -> str | None:
    """The one rule for class names, wherever they come from (folders, --class-names, files): non-empty
    strings, no two that read alike (another Unicode form, a lookalike letter), since no output could
    tell those classes apart."""
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        return (f"class names must be non-empty strings, got {bad[0]!r} in {list(names)!r}; "
                "give every class a name")
    twins = normalisation_twins(names)
    if twins:
        return (f"{how_alike(*twins[0])}: every output would show two identical-looking classes; "
                "give each class its own name")
    return None


def _entry(name: str, blocks: tuple[int, ...], channels: tuple[int, ...], params: int, top1_20ep: float) -> ModelSpec:
    return ModelSpec(name=name, blocks=blocks, channels=channels, report_params=params, report_top1_20ep=top1_20ep)


# Table 1 of the report (N=4, F=3, K=1, P=4 throughout): parameters and 20-epoch test accuracy
# (Adadelta, batch 32, crop + flip), as provenance. The channel widths are the report's own code's;
# resnet22 is its best model ("resnet22_2" there), resnet24 is its "resnet22_1". Trained weights
# are records of their own: ``aperture_zoo.catalog``.
_REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        _entry("resnet10", (1, 1, 1, 1), (64, 128, 256, 512), 4_903_242, 81.61),
        _entry("resnet18", (2, 2, 2, 2), (64, 157, 211, 270), 4_996_254, 83.35),
        _entry("resnet20", (2, 2, 2, 3), (64, 128, 185, 245), 4_998_382, 83.63),
        _entry("resnet22", (3, 2, 3, 2), (64, 128, 192, 256), 4_922_826, 84.53),
        _entry("resnet24", (3, 3, 2, 3), (64, 128, 128, 256), 4_935_242, 83.95),
        _entry("resnet32", (4, 4, 4, 3), (32, 64, 128, 256), 4_754_218, 82.80),
    )
}


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching an fnmatch pattern, e.g. ``list_models("resnet2*")``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_spec(name: str) -> ModelSpec:
    """The registered spec; an unknown name raises UnknownModelError naming close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(_unknown_message(name)) from None


def register(spec: ModelSpec, *, overwrite: bool = False) -> ModelSpec:
    """Add a spec to the registry (for experiments); refuses to shadow a name silently."""
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"{spec.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[spec.name] = spec
    return spec


def _unknown_message(name: str) -> str:
    names = list_models()
    # Case first, then near-typos (a high similarity ratio), then looser matches for other spellings.
    close = [n for n in names if n == name.lower()]
    close = close or difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.9)
    close = close or difflib.get_close_matches(name.lower(), names, n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(sorted(close))}?" if close else "run `aperture list` to see them."
    return f"unknown model {name!r}; {hint} Available: {', '.join(names)}"
