"""Weights as safetensors with self-describing metadata; never pickle.

A file carries its architecture, so loading can say exactly what does not match instead of failing
on the first shape error or, worse, loading silently into the wrong network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._version import __version__
from .errors import ApertureError
from .files import atomic_path
from .model import ResNet, count_parameters, create_model
from .registry import ModelSpec

FORMAT = "aperture_zoo/1"
# Raw pickle (PROTO opcode 0x80 then protocol 2-5) and torch.save's zip container.
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


class WeightsError(ApertureError, ValueError):
    """A weights file that cannot be used; the message names the problem and the fix."""


def build_metadata(model: ResNet, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """String metadata for a safetensors file: the spec plus whatever the caller knows."""
    spec = model.spec
    meta: dict[str, Any] = {
        "format": FORMAT,
        "arch": spec.name,
        "spec": json.dumps(spec.arch_dict(), sort_keys=True),
        "num_params": count_parameters(model),
        **_own_facts(model),
        "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)),
        "label_names": json.dumps(list(spec.label_names)),
        "torch_version": torch.__version__,
        "package_version": __version__,
    }
    for key, value in (extra or {}).items():
        meta[key] = value
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()}


def _own_facts(model: ResNet) -> dict[str, Any]:
    """What the model's own weights file said about its data, and its calibration, so a re-save keeps them.

    A model never loaded from a file says CIFAR-10 only when its head is CIFAR-10's; with other class
    names no dataset is recorded (never one it was not trained on; readers then check the head).
    """
    read = decode_metadata(getattr(model, "weights_metadata", None) or {})
    out: dict[str, Any] = {}
    if isinstance(read.get("dataset"), str):
        out["dataset"] = read["dataset"]
    elif model.spec.class_names is None and model.spec.num_classes == 10:
        out["dataset"] = "cifar10"
    if isinstance(read.get("data"), dict):
        out["data"] = read["data"]
    if model.temperature is not None:
        out["temperature"] = model.temperature
    for key in ("calibrator", "calibrator_tta"):
        if getattr(model, key, None) is not None:
            out[key] = getattr(model, key).to_dict()
    return out


def decode_metadata(meta: dict[str, str]) -> dict[str, Any]:
    """String metadata (safetensors header or ONNX ``metadata_props``) with JSON values decoded."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        try:
            out[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            out[key] = value
    return out


def save_weights(model: ResNet, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> Path:
    """Write the state dict (contiguous, CPU) atomically, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = build_metadata(model, metadata)
    try:  # the readers' own check of names and normalisation, so that no file is written that they refuse
        spec_from_metadata(meta, model.spec)
    except ApertureError as exc:
        raise WeightsError(f"{str(path)!r} was not written: every reader would refuse its metadata ({exc})") from None
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        write_safetensors(tensors, tmp, meta)
    return path


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors' writer, with its I/O failures (full or read-only disk) raised as the OSError they are."""
    import errno
    import re

    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        num = int(code.group(1))
        raise OSError(num, os.strerror(num) if num in errno.errorcode else str(exc), str(path)) from None


def _check_path(path: Path) -> None:
    if not path.exists():
        raise WeightsError(
            f"weights file {str(path)!r} does not exist; check the path, or use the published weights "
            "(load(NAME, pretrained=True); on the command line --pretrained)"
        )
    if path.is_dir():
        raise WeightsError(f"{str(path)!r} is a directory; pass the model.safetensors file inside it")
    if not path.is_file():  # reading a FIFO or a device would block forever or never end
        raise WeightsError(f"{str(path)!r} is not a regular file (a pipe, socket or device); pass a model.safetensors file")


def looks_safetensors(head: bytes, size: int) -> bool:
    """safetensors starts with its header length (u64 LE), then "{"."""
    n = int.from_bytes(head[:8], "little") if len(head) >= 9 else -1
    return head[8:9] == b"{" and 0 < n <= size - 8


def _refuse_pickle(head: bytes, size: int, path: Path) -> None:
    """A pickle is refused by its first bytes, before anything parses it."""
    # that header length's first byte can be 0x80 too, so only a file that is not plausibly safetensors is a pickle
    if head.startswith(_PICKLE_MAGIC) and not looks_safetensors(head, size):
        raise WeightsError(
            f"{str(path)!r} is a PyTorch pickle checkpoint, not safetensors; it was not loaded "
            "because unpickling can run arbitrary code. If you trust it, convert it once: "
            f"aperture convert {path} model.safetensors --model NAME"
        )


def _refuse_onnx(head: bytes, path: Path) -> None:
    """An exported .onnx file (or a Git LFS pointer) given where weights are read is named as such, not corrupt."""
    import shlex

    if head.startswith(b"version h"):  # "version https://git-lfs.github.com/spec/v1": a checkout without git lfs
        raise WeightsError(f"{str(path)!r} is a Git LFS pointer, not the weights: fetch them with `git lfs pull`")

    if path.suffix.lower() == ".onnx" and head[8:9] != b"{":
        raise WeightsError(
            f"{str(path)!r} is an ONNX file, not safetensors weights; run it with --onnx: aperture predict IMAGE "
            f"--onnx {shlex.quote(str(path))} (Python: aperture_zoo.export.OnnxClassifier), or pass the model.safetensors it was exported from"
        )


def _check_readable(path: Path) -> None:
    _check_path(path)
    with path.open("rb") as f:
        head = f.read(9)
    _refuse_pickle(head, path.stat().st_size, path)
    _refuse_onnx(head, path)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The file's string metadata (empty for a bare safetensors file)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    _check_readable(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(
            f"{str(path)!r} is not a readable safetensors file ({exc}); it is truncated or "
            "corrupt. Download or export it again."
        ) from None


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """A weights file's bytes, read once: the caller hashes them and parses them (no second open)."""
    path = Path(path)
    _check_path(path)
    data = path.read_bytes()
    _refuse_pickle(data[:9], len(data), path)
    _refuse_onnx(data[:9], path)
    return data


def state_dict_from_bytes(data: bytes, path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of safetensors bytes, with corruption reported as a WeightsError."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)  # validates the header, offsets and sizes (safetensors' own parser)
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + n]).get("__metadata__") or {}  # the header safetensors just validated
    except (SafetensorError, ValueError, RuntimeError, AttributeError) as exc:
        raise WeightsError(
            f"{str(path)!r} is not a readable safetensors file ({exc}); it is truncated or "
            "corrupt. Download or export it again."
        ) from None
    return tensors, dict(meta)


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata from one read of the file, with corruption reported as a WeightsError."""
    return state_dict_from_bytes(read_bytes(path), path)


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights holding NaN or infinity: they load and run, but every answer would be wrong.

    The one check used by every path that takes weights in (load, eval, export, push).
    """
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(
            f"{where} holds non-finite values (NaN or infinity) in {len(bad)} of {len(tensors)} tensors "
            f"({_short(bad, 3)}); training diverged or the file is damaged. Use an earlier checkpoint, "
            "retrain with a lower --lr, or download the file again"
        )
    negative = [k for k, v in tensors.items() if k.endswith("running_var") and bool((v < 0).any())]
    if negative:  # a variance below zero makes BatchNorm divide by the square root of a negative: NaN
        raise WeightsError(
            f"{where} holds negative BatchNorm variances in {len(negative)} tensors ({_short(negative, 3)}); "
            "the file is damaged. Use an earlier checkpoint or download the file again"
        )


def _saved_arch(meta: dict[str, str], path: Path | None = None) -> dict[str, Any]:
    """The architecture recorded in a file's metadata, or a WeightsError if it is unreadable."""
    try:
        arch = json.loads(meta["spec"])
    except (json.JSONDecodeError, TypeError):
        arch = None
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        where = f"{str(path)!r}" if path is not None else "the weights file"
        raise WeightsError(
            f"{where} has a damaged 'spec' entry in its metadata ({meta['spec'][:80]!r}); it was "
            "edited or corrupted. Save it again with aperture_zoo.save_weights"
        )
    return arch


def spec_from_metadata(meta: dict[str, str], base: ModelSpec | None = None) -> ModelSpec | None:
    """Rebuild the spec a file was saved with (None for a file without our metadata)."""
    if "spec" not in meta:
        return None
    arch = _saved_arch(meta)
    if base is None:
        from .registry import get_spec

        base = get_spec(arch["name"])
    from .labels import data_fields_from_metadata  # class names and normalisation travel with the weights

    return base.replace(**arch, **data_fields_from_metadata(meta, int(arch.get("num_classes", base.num_classes)),
                                                            own_head="num_classes" in arch))


def describe_mismatch(model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Every key and shape that differ (and the architecture the tensors fit), for one refusal that says all."""
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing keys: {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    shapes = [f"{key}: file has shape {tuple(tensors[key].shape)}, model expects {tuple(expected[key].shape)}"
              for key in sorted(set(expected) & set(tensors))
              if tuple(expected[key].shape) != tuple(tensors[key].shape)]
    problems += shapes[:3] + ([f"(+{len(shapes) - 3} more shape differences)"] if len(shapes) > 3 else [])
    if problems:
        guess = _matching_arch(tensors)
        if guess and guess != getattr(getattr(model, "spec", None), "name", None):
            problems.append(f"the tensors fit {guess}: use that model name")
    return problems


def _matching_arch(tensors: dict[str, torch.Tensor]) -> str | None:
    """The registered architecture whose every key and shape the tensors match, if one does."""
    from .registry import list_models

    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    for name in list_models():
        with torch.device("meta"):  # shapes only: no memory, no init cost
            ours = {k: tuple(v.shape) for k, v in create_model(name).state_dict().items()}
        if ours == shapes:
            return name
    return None


def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_weights(model_or_name: ResNet | str, path: str | os.PathLike[str], strict: bool = True) -> ResNet:
    """Load a safetensors file into a model (or a registry name) after checking it matches.

    Architecture, num_classes, every key and every shape are compared first, and all differences
    are reported together.
    """
    return apply_state_dict(model_or_name, *read_state_dict(path), where=path, strict=strict)


def apply_state_dict(
    model_or_name: ResNet | str, tensors: dict[str, torch.Tensor], meta: dict[str, str], *,
    where: str | os.PathLike[str], strict: bool = True,
) -> ResNet:
    """``load_weights`` for tensors already read (and hashed) by the caller; ``where`` names them in errors."""
    path = Path(where)
    model = create_model(model_or_name) if isinstance(model_or_name, str) else model_or_name
    spec = model.spec
    saved = _saved_arch(meta, path) if "spec" in meta else None
    if saved is not None:  # the architecture first: a class count is only worth mentioning for the same network
        ours = spec.arch_dict()
        diffs = [k for k in ours if k not in ("name", "num_classes") and saved.get(k) != ours[k]]
        if diffs:
            detail = "; ".join(f"{k}: file {saved.get(k)} vs model {ours[k]}" for k in diffs)
            if saved.get("name") == spec.name:  # same name, another shape (a derived --arch): say the shape
                raise WeightsError(
                    f"{str(path)!r} holds a {spec.name} of another shape than this model ({detail}); load it "
                    "without a name or shape options, aperture_zoo.load(PATH) (the file names its own shape), or "
                    "create the model with that shape")
            raise WeightsError(
                f"{str(path)!r} holds weights for architecture {saved.get('name')!r}, not "
                f"{spec.name!r} ({detail}); load it with the matching model name ({saved.get('name')!r}), "
                "or with no model name at all: the file names its own"
            )
        if strict and saved.get("num_classes") != ours["num_classes"]:
            raise WeightsError(
                f"{str(path)!r} was trained for {saved.get('num_classes')} classes but the model has "
                f"{ours['num_classes']}; create the model with num_classes={saved.get('num_classes')}, or "
                "load_weights(model, PATH, strict=False) to load everything but the head"
            )
    check_finite(tensors, repr(str(path)))
    problems = describe_mismatch(model, tensors)
    if strict and problems:
        arch = meta.get("arch", "an unknown architecture")
        raise WeightsError(
            f"{str(path)!r} does not match {spec.name} (file is for {arch}): " + "; ".join(problems)
        )
    if not strict:
        keep = model.state_dict()
        tensors = {k: v for k, v in tensors.items() if k in keep and keep[k].shape == v.shape}
    model.load_state_dict(tensors, strict=strict)
    head = holds_head(model, tensors)
    # provenance for `aperture info`, model cards and a re-save; with a fresh head, less what described the old one
    model.weights_metadata = meta if head else {k: v for k, v in meta.items() if k not in HEAD_FACTS}
    _adopt_file_facts(model, meta, head_from_file=head)
    if head:  # calibration is fitted to one head's logits: the file's own, or none
        model.temperature = model.calibrator = model.calibrator_tta = model.calibration_notice = None
        apply_calibration(model, meta, str(path))
    return model


# What a file's metadata says about its head's answers (classes, data, calibration, scores): none of it holds
# for a fresh head, so a model that took everything but the head never carries, applies or re-saves it.
HEAD_FACTS = frozenset({"label_names", "dataset", "data", "temperature", "temperature_fitted_on",
                        "temperature_fitted_for_sha256", "calibrator", "calibrator_tta", "test_top1", "test_loss"})


def holds_head(model: nn.Module, tensors: dict[str, torch.Tensor]) -> bool:
    """Whether ``model``'s head is the one in ``tensors`` (same shape): only then do the file's calibration,
    class names and dataset describe it (``num_classes`` other than the file's, or 0, makes a fresh head)."""
    ours = model.state_dict().get("fc.weight")
    theirs = tensors.get("fc.weight")
    return ours is not None and theirs is not None and tuple(ours.shape) == tuple(theirs.shape)


def _adopt_file_facts(model: ResNet, meta: dict[str, str], head_from_file: bool) -> None:
    """The file's normalisation, and with its head its class names, go with its tensors."""
    from .labels import data_fields_from_metadata

    fields = data_fields_from_metadata(meta, model.spec.num_classes)
    if not head_from_file:  # a fresh head: the file's classes are not this model's, nor CIFAR-10's by default
        fields.pop("class_names", None)
        if model.spec.class_names is None and model.spec.num_classes > 0:
            fields["class_names"] = tuple(f"class_{i}" for i in range(model.spec.num_classes))
    if fields:
        model.spec = model.spec.replace(**fields)


def apply_calibration(model: ResNet, meta: dict[str, Any], where: str) -> None:
    """The calibrator a file records (fitted on a run's validation split), checked; a bad one is refused
    here. A file from before calibrators that records only a temperature falls back to it, noted once."""
    from .calibrators import Calibrator, check_temperature, from_metadata

    if "temperature" in meta:
        model.temperature = check_temperature(meta["temperature"], f"the temperature in {where!r}")
    if "calibrator_tta" in meta:
        model.calibrator_tta = from_metadata({"calibrator": meta["calibrator_tta"]}, f"{where!r} (flip TTA)")
    if "calibrator" in meta:
        model.calibrator = from_metadata({"calibrator": meta["calibrator"]}, repr(where))
    elif model.temperature is not None:
        model.calibrator = Calibrator("temperature", model.temperature, fitted_on=str(meta.get("temperature_fitted_on", "")))
        model.calibration_notice = (f"{where!r} records only a temperature ({model.temperature:.4g}), from before "
                                    "calibrators: its probabilities use that one temperature; retrain or re-fit to "
                                    "get the calibrator chosen by held-out NLL")
    for name in ("calibrator", "calibrator_tta"):  # bound to this head: handed to another model, refused
        if getattr(model, name, None) is not None:
            setattr(model, name, getattr(model, name).for_head(model.spec.num_classes))


def write_with_temperature(src: str | os.PathLike[str], dst: str | os.PathLike[str], temperature: float,
                           fitted_on: str, fitted_for_sha256: str, calibrator: dict[str, Any] | None = None) -> Path:
    """A copy of the weights ``src`` whose metadata carries a temperature (and ``calibrator``, a
    ``Calibrator.to_dict()``) fitted for exactly those bytes.

    ``fitted_for_sha256`` is the SHA-256 of the file the temperature was fitted with; a ``src`` that
    no longer hashes to it is refused, and the copy records it (``temperature_fitted_for_sha256``).
    ``dst`` is created, never replaced: an existing file (or ``src`` itself) is refused.
    """
    import hashlib

    from .calibrators import Calibrator, check_temperature

    src, dst = Path(src), Path(dst)
    t = check_temperature(temperature, "the fitted temperature")
    cal = None if calibrator is None else {**Calibrator.from_dict(calibrator, "the fitted calibrator").to_dict(),
                                           "fitted_on": fitted_on}
    if dst.exists() or dst.is_symlink() or dst.resolve() == src.resolve():
        raise WeightsError(f"{str(dst)!r} already exists; the calibrated weights go to a new file, so name one "
                           "that does not exist yet")
    data = read_bytes(src)
    if hashlib.sha256(data).hexdigest() != fitted_for_sha256:
        raise WeightsError(f"{str(src)!r} changed while it was evaluated; evaluate it again")
    tensors, meta = state_dict_from_bytes(data, src)
    meta = {**meta, "temperature": json.dumps(round(t, 6)), "temperature_fitted_on": fitted_on,
            "temperature_fitted_for_sha256": fitted_for_sha256,
            **({"calibrator": json.dumps(cal, sort_keys=True)} if cal is not None else {})}
    with atomic_path(dst.with_name(dst.name + ".new")) as tmp:
        write_safetensors(tensors, tmp, meta)
    try:
        os.link(dst.with_name(dst.name + ".new"), dst)  # fails if dst appeared meanwhile: never overwritten
    finally:
        dst.with_name(dst.name + ".new").unlink(missing_ok=True)
    return dst
