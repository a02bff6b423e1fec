"""Where pretrained weights come from, and the one-line ``load()``.

Resolution order for ``load(name, pretrained=True)``:

1. ``weights=`` — an explicit safetensors path, ``local-dir:DIR`` or ``hf-hub:ORG/NAME[@rev]``;
2. a local directory, for an architecture's name only (``resnet10``, never a tag such as
   ``resnet10.fast``: a tag names its pinned file): ``$APERTURE_WEIGHTS_DIR`` holding
   ``<name>/model.safetensors`` (or ``<name>.safetensors``), unpinned, so every command says it is not
   the published weights (``unpublished_note``);
3. the published record's Hugging Face Hub repo (``aperture_zoo.catalog``): its ``hub_repo`` at its
   pinned revision, else ``$APERTURE_HUB_ORG/<name>`` (default org ``aperture-zoo``) at ``main``,
   through ``hf_hub_download`` and its cache (``HF_HOME``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``
   honoured); a file whose SHA-256 differs from the record's pin is refused;
4. ``model_cards/<name>/model.safetensors`` of a source checkout, refused too unless it hashes to the pin.

One path from a name to tensors, like timm's ``_resolve_pretrained_source`` feeding one
``load_pretrained`` and torchvision's ``Weights.get_state_dict(check_hash=True)``:
``resolve_source`` (once) -> ``Source(kind, location, pin)`` -> ``fetch`` (a path, nothing read) ->
``read`` (the file's bytes read once, hashed against the pin, parsed as safetensors).
``load()``, the CLI and the browser demo all go through ``fetch_weights``.

The name itself may be a source: ``"hf-hub:ORG/NAME[@rev]"``, ``"local-dir:DIR"`` or a path to a
``model.safetensors`` (or its folder). Whatever the source, the model is built by one rule
(``open_model``): the file's own architecture, head, class names, normalisation and calibration
(today a temperature) from its metadata; a bare file without metadata takes them from the
``config.json`` beside it (``aperture push``/``card`` write it); a registry name is only a check.
A source names a file, so ``load("hf-hub:...")``/``load("local-dir:...")`` load its weights like a
path does; only an explicit ``pretrained=False`` builds the architecture alone, from the same ``config.json``. An ``hf-hub:`` repo that the registry publishes to
is read at the registry's pinned revision (unless ``@rev`` names another), and every file the
registry pins (``model.safetensors``, ``config.json``) is SHA-256 checked. When nothing is found the error lists every place
it looked and why each failed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from . import hub
from .catalog import Weights, by_repo, find_weights, hub_location
from .files import CONFIG_FILENAME, WEIGHTS_FILENAME, file_sha256, read_json, user_path
from .model import ResNet, create_model
from .registry import ModelSpec, get_spec
from .sources import (HF_HUB_PREFIX, LOCAL_DIR_PREFIX, NoPretrainedWeightsError, from_local_dir, is_source,
                      source_kind, spec_from_config)
from .weights import (WeightsError, apply_state_dict, holds_head, read_bytes, read_metadata, spec_from_metadata,
                      state_dict_from_bytes)

# model_cards/ of the source checkout this package runs from (may not exist in an installed wheel).
MODEL_CARDS_DIR = Path(__file__).resolve().parent.parent / "model_cards"
log = logging.getLogger(__name__)


class PublishedWeightsUnavailableError(NoPretrainedWeightsError):
    """Weights are published for the model but cannot be reached now (offline, Hub down, not cached)."""

    def __init__(self, message: str, tag: str) -> None:
        super().__init__(message)
        self.tag = tag


@dataclass(frozen=True)
class Source:
    """Where one weights file comes from and the SHA-256 its bytes must have (resolved once)."""

    kind: Literal["file", "hub", "checkout"]
    location: str                  # a file path, or a Hub repo id
    arch: str | None               # the architecture the name means (None: a source, the file decides)
    pin: str | None = None         # None: a file the caller chose, or a repo whose config.json pins it
    revision: str | None = None    # Hub only
    record: Weights | None = None  # the published record behind it, if any
    fallback: Source | None = None  # the checkout copy, tried when the Hub cannot serve
    looked: tuple[str, ...] = ()   # places already found empty, for the error when nothing serves
    env_dir: bool = False          # $APERTURE_WEIGHTS_DIR's file answered a name: unpinned, not the published weights


@dataclass(frozen=True)
class LocalFile:
    """A weights file on disk and its pin (``hub.Fetched``'s local twin)."""

    path: Path
    pin: str | None = None
    tag: str | None = None

    def check(self, actual: str) -> None:
        if self.pin is not None and actual != self.pin:
            raise WeightsError(
                f"{self.path} has SHA-256 {actual}, but the published {self.tag} weights are pinned to "
                f"{self.pin}: the file is damaged or was replaced. Fix: restore it (git checkout -- {self.path}), "
                "or pass your own file explicitly with weights=PATH"
            )


@dataclass(frozen=True)
class Loaded:
    """Tensors and metadata from one read of a weights file, and that read's SHA-256."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    sha256: str
    path: Path
    source: Source


def _pinned(repo_id: str, revision: str | None, filename: str) -> tuple[str | None, str | None]:
    """(revision, SHA-256) a published record pins for ``filename`` of ``repo_id``, if one lives there.

    An explicit revision other than the pinned one is the caller's choice: it is used unpinned
    (the weights are then checked against the config.json of that commit instead).
    """
    w = by_repo(repo_id, revision)
    if w is None:
        return revision, None
    pins = {WEIGHTS_FILENAME: w.sha256, CONFIG_FILENAME: w.config_sha256}
    return revision or w.revision, pins.get(filename)


def _env_dir_weights(name: str) -> Path | None:
    """``$APERTURE_WEIGHTS_DIR/<name>/model.safetensors`` or ``<name>.safetensors`` there."""
    env_dir = os.environ.get("APERTURE_WEIGHTS_DIR")
    if not env_dir:
        return None
    directory = user_path(env_dir)
    if not directory.is_dir():  # a typo would otherwise fall back to other weights unnoticed
        log.warning("APERTURE_WEIGHTS_DIR=%s is not a directory; ignoring it", env_dir)
        return None
    for candidate in (directory / name / WEIGHTS_FILENAME, directory / f"{name}.safetensors"):
        if candidate.is_file():
            return candidate
    return None


def _explicit_source(ref: str, arch: str | None, name: str | None, record: Weights | None) -> Source:
    """``weights=`` (or a source given as the name): a path, a folder, ``local-dir:DIR`` or ``hf-hub:ORG/NAME[@rev]``."""
    kind = source_kind(ref)
    if kind == "hub":
        repo_id, revision = hub.parse_hf_hub(ref)
        revision, pin = _pinned(repo_id, revision, WEIGHTS_FILENAME)
        return Source("hub", repo_id, arch, pin, revision, record)
    if kind == "dir":
        return Source("file", str(from_local_dir(ref, name)), arch, record=record)
    return Source("file", str(user_path(ref)), arch, record=record)


def resolve_source(
    name: str, weights: str | os.PathLike[str] | None = None, *, cards_dir: Path | None = None
) -> Source:
    """Where ``load(name, pretrained=True)`` takes its weights from, in the order of this module's docstring.

    Nothing is downloaded or read here; unknown names fail here, with suggestions.
    """
    if is_source(name):
        if weights is not None:
            raise WeightsError(f"{name!r} already names the weights; drop weights={str(weights)!r} (or name the "
                               "architecture instead, e.g. load('resnet22', weights=...))")
        return _explicit_source(str(name), None, None, None)
    record = find_weights(name)  # the one catalog lookup of a load
    arch = record.arch if record else name
    if weights is not None:
        return _explicit_source(str(weights), arch, name, record)
    looked: list[str] = []
    found = _env_dir_weights(arch) if name == arch else None  # a tag names its pinned file, never an unpinned one
    if found is not None:
        return Source("file", str(found), arch, record=record, env_dir=True)
    if os.environ.get("APERTURE_WEIGHTS_DIR") and name == arch:
        looked.append(f"$APERTURE_WEIGHTS_DIR={os.environ['APERTURE_WEIGHTS_DIR']} (no {arch}/{WEIGHTS_FILENAME})")
    if record is None:
        looked.append(f"the catalog (no published weights for {name})")
        raise NoPretrainedWeightsError(
            f"no published weights for {name}. Looked in: {'; '.join(looked)}. Fix: pass "
            f"weights='runs/.../model.safetensors' (train with `aperture train {arch}`), set "
            "APERTURE_WEIGHTS_DIR, or set APERTURE_HUB_ORG / HF_ENDPOINT to where they are published."
        )
    repo_id, revision = hub_location(record)
    checkout = Source("checkout", str((cards_dir or MODEL_CARDS_DIR) / arch / WEIGHTS_FILENAME), arch,
                      record.sha256, record=record)
    return Source("hub", repo_id, arch, record.sha256, revision, record, checkout, tuple(looked))


def fetch(source: Source, *, download: bool = True) -> hub.Fetched | LocalFile:
    """The file a source names, on disk and not yet read; the Hub's cache serves it when it can.

    With ``download=False`` (``aperture list``/``info``) the Hub step only looks in the cache.
    """
    if source.kind != "hub":
        return LocalFile(Path(source.location), source.pin, source.record.tag if source.record else None)
    try:
        return hub.fetch(source.location, WEIGHTS_FILENAME, source.revision, sha256=source.pin,
                         local_only=not download)
    except hub.HubUnavailableError as exc:
        fallback, record = source.fallback, source.record
        if fallback is None or record is None:
            raise
        if Path(fallback.location).is_file():
            return fetch(fallback)
        # Published, but not reachable from here: say that first, not "train your own".
        raise PublishedWeightsUnavailableError(
            f"the published weights {record.tag} could not be fetched: {exc} (no copy in "
            f"{Path(fallback.location).parent} either" + "".join(f"; {x}" for x in source.looked) + ")",
            record.tag) from None


def read(fetched: hub.Fetched | LocalFile, source: Source) -> Loaded:
    """One read of the file: its bytes hashed against the pin, then parsed (torchvision's ``check_hash``)."""
    data = read_bytes(fetched.path)
    digest = hashlib.sha256(data).hexdigest()
    fetched.check(digest)
    tensors, meta = state_dict_from_bytes(data, fetched.path)
    return Loaded(tensors, meta, digest, fetched.path, source)


def unpublished_note(loaded: Loaded) -> str | None:
    """The one line every command shows when ``$APERTURE_WEIGHTS_DIR`` answered a name with other bytes
    than the published ones (None otherwise): its answers, card or exports are not the zoo's."""
    source = loaded.source
    if not source.env_dir or (source.record is not None and loaded.sha256 == source.record.sha256):
        return None
    published = (f"those are {source.record.tag}: name that tag for them" if source.record is not None
                 else f"none are published for {source.arch}")
    return (f"{source.arch}: {loaded.path} (from $APERTURE_WEIGHTS_DIR, SHA-256 {loaded.sha256[:12]}...) is NOT "
            f"the published weights but yours; {published}")


def fetch_weights(
    name: str, weights: str | os.PathLike[str] | None = None, *, cards_dir: Path | None = None,
    download: bool = True,
) -> Loaded:
    """resolve -> fetch -> read: the tensors ``load(name, pretrained=True)`` (or ``weights=``) would use."""
    source = resolve_source(name, weights, cards_dir=cards_dir)
    return read(fetch(source, download=download), source)


def resolve_weights(
    name: str, weights: str | os.PathLike[str] | None = None, *, download: bool = False,
    cards_dir: Path | None = None,
) -> Path:
    """The weights file ``load(name, pretrained=True)`` would use, its pin checked (for listings).

    With ``download=False`` (the default, used by ``aperture list``/``info``) the Hub step only
    looks in the client's cache.
    """
    fetched = fetch(resolve_source(name, weights, cards_dir=cards_dir), download=download)
    if fetched.pin is not None:
        fetched.check(file_sha256(fetched.path))
    return fetched.path


def published_weights(name: str, cards_dir: Path | None = None) -> Path | None:
    """The checkout's copy of the zoo's published weights for ``name``, only if it hashes to the pin.

    Never a user's own run: listings and ``aperture push`` must not mistake an experiment for the
    zoo's weights (an architecture with no record has no published weights at all).
    """
    record = find_weights(name)
    if record is None:
        return None
    card_file = LocalFile((cards_dir or MODEL_CARDS_DIR) / record.arch / WEIGHTS_FILENAME, record.sha256, record.tag)
    if not card_file.path.is_file():
        return None
    try:
        card_file.check(file_sha256(card_file.path))
    except WeightsError:
        return None
    return card_file.path


def _config_of(source: Source) -> dict | None:
    """config.json beside a source's weights (the Hub repo's, pinned when the registry pins it); None if absent."""
    if source.kind == "hub":
        revision, pin = _pinned(source.location, source.revision, CONFIG_FILENAME)
        path = hub.download(source.location, CONFIG_FILENAME, revision, sha256=pin)
    else:
        path = Path(source.location).parent / CONFIG_FILENAME
        if not path.is_file():
            return None
    return read_json(path, "fetch or write it again", WeightsError)


def _source_spec(ref: str) -> ModelSpec:
    """The architecture an ``hf-hub:``/``local-dir:`` source describes: its config.json, else its weights' metadata."""
    if source_kind(ref) == "hub":
        source = _explicit_source(ref, None, None, None)
    elif source_kind(ref) == "path":  # a weights file: its own metadata first, as loading it would
        source = Source("file", str(user_path(ref)), None)
        own = spec_from_metadata(read_metadata(source.location)) if Path(source.location).is_file() else None
        if own is not None:
            return own
    else:
        source = Source("file", str(user_path(ref.removeprefix(LOCAL_DIR_PREFIX)) / WEIGHTS_FILENAME), None)
    config = _config_of(source)
    if config is not None:
        if source.kind == "file" and Path(source.location).is_file():  # the weights it describes are there: the
            pin, digest = hub.recorded_sha256(config), file_sha256(source.location)  # same rule as loading them
            if pin is not None and pin != digest:
                raise WeightsError(f"{ref!r}: its {CONFIG_FILENAME} records SHA-256 {pin}, but the {WEIGHTS_FILENAME} "
                                   f"beside it has {digest}: that config describes other weights, so the architecture "
                                   "it gives may not be theirs. Put back the weights it was written for, or write the "
                                   "folder again with `aperture card`")
        return spec_from_config(config, repr(ref))
    spec = spec_from_metadata(read_metadata(source.location if source_kind(ref) == "path" else from_local_dir(ref, None)))
    if spec is None:
        raise WeightsError(f"{ref!r} has no config.json and its weights carry no architecture")
    return spec


def load(
    name: str,
    pretrained: bool | None = None,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    *,
    cards_dir: str | os.PathLike[str] | None = None,
    **overrides: object,
) -> ResNet:
    """A model in eval mode on ``device``; trained weights when ``pretrained`` or ``weights``.

    ``name`` is a registered model (``"resnet22"``: its default published weights), a weights tag
    (``"resnet22.fast"``, see ``list_pretrained()``) or a source: ``"hf-hub:ORG/NAME[@rev]"``,
    ``"local-dir:DIR"`` or a path to a ``model.safetensors``. Weights are searched in the order given
    in this module's docstring: ``weights=`` (path, ``local-dir:``, ``hf-hub:``) -> ``$APERTURE_WEIGHTS_DIR``
    (a name only, never a tag) -> the record's Hub repo (SHA-256 pinned) -> ``<cards_dir>/<arch>/`` (default: the checkout's
    ``model_cards/``, pinned too). Whatever the source, the model has the file's own architecture, head,
    class names, mean/std and temperature: a source (path, ``local-dir:``, ``hf-hub:``) names a file, so its
    weights load unless ``pretrained=False`` is given explicitly (then the architecture alone). ``overrides`` change the architecture (``num_classes=100``):
    tensors that no longer fit, such as the head, start fresh; a ``mean``/``std`` (or, with the file's head,
    ``class_names``) other than the weights' own is refused, since trained weights answer with their own.
    """
    cards = Path(cards_dir) if cards_dir is not None else None
    kind = source_kind(name)
    if kind != "name" and pretrained is False and weights is None:  # asked for: every source, one rule
        model = create_model(_source_spec(name), **overrides)  # type: ignore[arg-type]
    elif pretrained or weights is not None or "." in name or kind != "name":  # a tag or a path names weights
        model, _ = open_model(name, weights, cards_dir=cards, overrides=overrides)
    else:
        record = find_weights(name)
        model = create_model(record.arch if record else name, **overrides)
    return model.to(device).eval()


def open_model(
    name: str, weights: str | os.PathLike[str] | None = None, *, cards_dir: Path | None = None,
    overrides: dict[str, object] | None = None, download: bool = True,
) -> tuple[ResNet, Loaded]:
    """The one rule from any source to a model: resolve -> fetch -> read once -> the file's own spec and calibration.

    Returns the eval-mode model and what was read (path, SHA-256, metadata), for commands that record them.
    """
    loaded = fetch_weights(name, weights, cards_dir=cards_dir, download=download)
    return model_from(loaded, overrides), loaded


def file_spec(loaded: Loaded, overrides: dict[str, object] | None = None) -> ModelSpec:
    """The spec a weights file records (architecture, head, classes, mean/std), with ``overrides``.

    A file without our metadata takes it from the config.json beside it; a registry name that the
    file does not match keeps the name's spec, so that loading says exactly what differs.
    """
    saved = spec_from_metadata(loaded.metadata)
    arch = loaded.source.arch
    # an hf-hub: source's config.json is always fetched: the registry may pin it, and a pin is always checked
    config = _config_of(loaded.source) if arch is None and (saved is None or loaded.source.kind == "hub") else None
    if saved is not None and (arch is None or saved.name == arch):
        spec = saved
    elif arch is not None:
        spec = get_spec(arch)
    else:
        if config is None:
            raise WeightsError(f"{str(loaded.path)!r} records no architecture and has no config.json beside it; "
                               "name the architecture: load('resnet22', weights=PATH) or `--weights PATH` with a model name")
        if loaded.source.kind != "hub":  # the Hub path checked the same record when it fetched the file
            _check_config_record(config, loaded)
        spec = spec_from_config(config, repr(str(loaded.path)))
    if overrides:
        _refuse_other_facts(spec, overrides, loaded.path)
    return spec.replace(**overrides) if overrides else spec


def _refuse_other_facts(spec: ModelSpec, overrides: dict[str, object], path: Path) -> None:
    """Trained weights answer with the normalisation (and, with their head, the class names) they were trained
    with: another value given as a keyword would be dropped or give wrong answers, so it is refused."""
    fresh_head = "num_classes" in overrides and overrides["num_classes"] != spec.num_classes
    own = {"mean": spec.mean, "std": spec.std, **({} if fresh_head else {"class_names": spec.label_names})}
    for key, value in own.items():
        given = overrides.get(key)
        if given is not None and not isinstance(given, str) and tuple(given) != tuple(value):  # type: ignore[call-overload]
            fix = " (a new head for your classes: num_classes=N with class_names=[...])" if key == "class_names" else ""
            shown = ", ".join(map(repr, value))  # type: ignore[arg-type]
            raise WeightsError(f"{key}={tuple(given)!r} differs from the {key} of {str(path)!r} ({shown}): trained "  # type: ignore[call-overload]
                               f"weights answer with their own; drop {key}={fix}")


def _check_config_record(config: object, loaded: Loaded) -> None:
    """Bare weights take their architecture and class names from the config.json beside them only when it
    records their SHA-256 (``hub.recorded_sha256``, the rule an ``hf-hub:`` repo is held to): a name or a
    neighbour proves nothing."""
    pin = hub.recorded_sha256(config)
    where = f"the {CONFIG_FILENAME} beside it"
    if pin is None:
        raise WeightsError(f"{str(loaded.path)!r} carries no metadata and {where} records no SHA-256 for it "
                           f"(files.{WEIGHTS_FILENAME}.sha256), so nothing shows that config describes these weights; "
                           "refusing to load it. Write the folder with `aperture card` or `aperture push` (they record "
                           "it), or name the architecture: load('resnet22', weights=PATH)")
    if pin != loaded.sha256:
        raise WeightsError(f"{str(loaded.path)!r} has SHA-256 {loaded.sha256}, but {where} records {pin}: that "
                           "config describes other weights (its class names would be wrong); refusing to load it. "
                           "Put back the weights it was written for, or write the folder again with `aperture card`")


def model_from(loaded: Loaded, overrides: dict[str, object] | None = None) -> ResNet:
    """An eval-mode model of the file's own spec (``file_spec``), holding its tensors and its calibration."""
    model = create_model(file_spec(loaded, overrides))
    return _apply(model, loaded, strict=not overrides).eval()


def _apply(model: ResNet, loaded: Loaded, strict: bool = True) -> ResNet:
    model = apply_state_dict(model, loaded.tensors, loaded.metadata, where=loaded.path, strict=strict)
    return with_record_calibration(model, loaded)


def with_record_calibration(model: ResNet, loaded: Loaded) -> ResNet:
    """The published record's calibrator (and one-temperature fit) on ``model`` when these bytes are
    that record's pinned file: the published files predate calibration and are never rewritten, so
    the record carries it. A calibrator or temperature in the file's own metadata wins; a model that did
    not take the file's head (``num_classes`` other than the file's, or 0) takes no calibration from it."""
    if model.calibrator is None and model.temperature is None and holds_head(model, loaded.tensors):
        from .catalog import get_weights, list_pretrained

        record = next((w for w in map(get_weights, list_pretrained()) if w.sha256 == loaded.sha256), None)
        if record is not None:
            model.calibrator, model.calibrator_tta = (c and c.for_head(model.spec.num_classes)
                                                      for c in (record.calibrator, record.calibrator_tta))
            model.temperature = record.temperature
    return model
