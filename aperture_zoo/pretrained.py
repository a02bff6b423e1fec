"""Where pretrained weights come from, and the one-line ``load()``.

Resolution order for ``load(name, pretrained=True)``:

1. ``weights=`` — an explicit safetensors path, ``local-dir:DIR`` or ``hf-hub:ORG/NAME[@rev]``;
2. a local directory: ``$APERTURE_WEIGHTS_DIR`` holding ``<name>/model.safetensors`` (or
   ``<name>.safetensors``);
3. the published record's Hugging Face Hub repo (``aperture_zoo.catalog``): its ``hub_repo`` at its
   pinned revision, else ``$APERTURE_HUB_ORG/<name>`` (default org ``aperture-zoo``) at ``main``,
   through ``hf_hub_download`` and its cache (``HF_HOME``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``
   honoured); a file whose SHA-256 differs from the record's pin is refused;
4. ``model_cards/<name>/model.safetensors`` of a source checkout, refused too unless it hashes to the pin.

``load("hf-hub:ORG/NAME[@rev]")`` and ``load("local-dir:DIR")`` (timm-style) take the
architecture from the source's ``config.json``. An ``hf-hub:`` repo that the registry publishes to
is read at the registry's pinned revision (unless ``@rev`` names another), and every file the
registry pins (``model.safetensors``, ``config.json``) is SHA-256 checked. When nothing is found the error lists every place
it looked and why each failed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from . import hub
from .catalog import Weights, by_repo, find_weights, hub_location
from .files import CONFIG_FILENAME, WEIGHTS_FILENAME
from .model import ResNet, create_model
from .registry import get_spec
from .weights import WeightsError, file_sha256, load_weights, read_metadata, spec_from_metadata

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"


class NoPretrainedWeightsError(WeightsError):
    """No published or local weights could be found for a model."""


class PublishedWeightsUnavailableError(NoPretrainedWeightsError):
    """Weights are published for the model but cannot be reached now (offline, Hub down, not cached)."""

    def __init__(self, message: str, tag: str) -> None:
        super().__init__(message)
        self.tag = tag


def model_cards_dir() -> Path:
    """``model_cards/`` of the source checkout this package runs from (may not exist)."""
    return Path(__file__).resolve().parent.parent / "model_cards"


def _in_local_dir(directory: Path, name: str) -> Path | None:
    for candidate in (directory / WEIGHTS_FILENAME, directory / name / WEIGHTS_FILENAME,
                      directory / f"{name}.safetensors"):
        if candidate.is_file():
            return candidate
    return None


def _from_local_dir(ref: str, name: str) -> Path:
    directory = Path(ref.removeprefix(LOCAL_DIR_PREFIX)).expanduser()
    found = _in_local_dir(directory, name)
    if found is None:
        raise NoPretrainedWeightsError(
            f"{ref!r} holds no weights for {name}: expected {directory / WEIGHTS_FILENAME}, "
            f"{directory / name / WEIGHTS_FILENAME} or {directory / (name + '.safetensors')}"
        )
    return found


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


def _from_hf_hub(ref: str, name: str | None, download: bool = True) -> Path:
    repo_id, revision = hub.parse_hf_hub(ref)
    revision, pin = _pinned(repo_id, revision, WEIGHTS_FILENAME)
    return hub.download(repo_id, WEIGHTS_FILENAME, revision, sha256=pin, local_only=not download)


def _env_dir_weights(name: str) -> Path | None:
    """``$APERTURE_WEIGHTS_DIR/<name>/model.safetensors`` or ``<name>.safetensors`` there."""
    env_dir = os.environ.get("APERTURE_WEIGHTS_DIR")
    if not env_dir:
        return None
    directory = Path(env_dir).expanduser()
    for candidate in (directory / name / WEIGHTS_FILENAME, directory / f"{name}.safetensors"):
        if candidate.is_file():
            return candidate
    return None


def published_weights(name: str) -> Path | None:
    """The checkout's copy of the zoo's published weights for ``name``, only if it hashes to the pin.

    Never a user's own run: listings and ``aperture push`` must not mistake an experiment for the
    zoo's weights (an architecture with no record has no published weights at all).
    """
    record = find_weights(name)
    card_file = model_cards_dir() / (record.arch if record else name) / WEIGHTS_FILENAME
    if record is None or not card_file.is_file():
        return None
    try:
        return _check_pin(card_file, record)
    except WeightsError:
        return None


def resolve_weights(
    name: str, weights: str | os.PathLike[str] | None = None, *, download: bool = False
) -> Path:
    """The weights file ``load(name, pretrained=True)`` would use, following the order above.

    With ``download=False`` (the default, used by ``aperture list``/``info``) the Hub step only
    looks in the client's cache; ``load()`` passes ``download=True``.
    """
    record = find_weights(name)  # unknown names fail here, with suggestions
    arch = record.arch if record else name
    if weights is not None:
        ref = str(weights)
        if ref.startswith(HF_HUB_PREFIX):
            return _from_hf_hub(ref, name, download)
        if ref.startswith(LOCAL_DIR_PREFIX):
            return _from_local_dir(ref, name)
        return Path(weights)

    looked: list[str] = []
    found = _env_dir_weights(arch)
    if found is not None:
        return found
    if os.environ.get("APERTURE_WEIGHTS_DIR"):
        looked.append(f"$APERTURE_WEIGHTS_DIR={os.environ['APERTURE_WEIGHTS_DIR']} (no {arch}/{WEIGHTS_FILENAME})")

    if record is None:
        looked.append(f"the catalog (no published weights for {name})")
    else:
        repo_id, revision = hub_location(record)
        try:
            return hub.download(repo_id, WEIGHTS_FILENAME, revision, sha256=record.sha256, local_only=not download)
        except hub.HubUnavailableError as exc:
            hub_problem = str(exc)
        card_file = model_cards_dir() / arch / WEIGHTS_FILENAME
        if card_file.is_file():
            return _check_pin(card_file, record)
        # Published, but not reachable from here: say that first, not "train your own".
        raise PublishedWeightsUnavailableError(
            f"the published weights {record.tag} could not be fetched: {hub_problem} (no copy in "
            f"{card_file.parent} either" + "".join(f"; {x}" for x in looked) + ")", record.tag)
    raise NoPretrainedWeightsError(
        f"no published weights for {name}. Looked in: {'; '.join(looked)}. Fix: pass "
        f"weights='runs/.../model.safetensors' (train with `aperture train {arch}`), set "
        "APERTURE_WEIGHTS_DIR, or set APERTURE_HUB_ORG / HF_ENDPOINT to where they are published."
    )


def _check_pin(path: Path, record: Weights) -> Path:
    """``path`` if its SHA-256 is the record's pin; a clear error naming both digests otherwise."""
    actual = file_sha256(path)
    if actual != record.sha256:
        raise WeightsError(
            f"{path} has SHA-256 {actual}, but the published {record.tag} weights are pinned to "
            f"{record.sha256}: the file is damaged or was replaced. Fix: restore it (git checkout -- {path}), "
            "or pass your own file explicitly with weights=PATH"
        )
    return path


def _source_config(source: str) -> dict:
    """config.json of an ``hf-hub:`` or ``local-dir:`` source (architecture, model args)."""
    if source.startswith(HF_HUB_PREFIX):
        repo_id, revision = hub.parse_hf_hub(source)
        revision, pin = _pinned(repo_id, revision, CONFIG_FILENAME)
        path = hub.download(repo_id, CONFIG_FILENAME, revision, sha256=pin)
    else:
        path = Path(source.removeprefix(LOCAL_DIR_PREFIX)).expanduser() / CONFIG_FILENAME
        if not path.is_file():
            weights = _from_local_dir(source, "model")
            spec = spec_from_metadata(read_metadata(weights))
            if spec is None:
                raise WeightsError(f"{source!r} has no config.json and its weights carry no architecture")
            return {"architecture": spec.name, "model_args": spec.arch_dict()}
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path} is not a readable config.json ({exc}); fetch or write it again") from None


def _create_from_source(source: str) -> ResNet:
    config = _source_config(source)
    arch = config.get("architecture") if isinstance(config, dict) else None
    args = (config.get("model_args") if isinstance(config, dict) else None) or {}
    if not arch or not isinstance(arch, str) or not isinstance(args, dict):
        raise WeightsError(f"config.json of {source!r} names no 'architecture' (or its 'model_args' are not an "
                           "object); it is not an aperture_zoo repo")
    spec = get_spec(arch)
    ours = spec.arch_dict()
    changes = {k: v for k, v in args.items() if k in ours and k != "name" and ours[k] != v}
    return create_model(spec.replace(**changes) if changes else spec)


def load(
    name: str,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    **overrides: object,
) -> ResNet:
    """A model in eval mode on ``device``; trained weights when ``pretrained`` or ``weights``.

    ``name`` is a registered model (``"resnet22"``: its default published weights), a weights tag
    (``"resnet22.fast"``, see ``list_pretrained()``) or a source: ``"hf-hub:ORG/NAME[@rev]"`` or
    ``"local-dir:DIR"``. Weights are searched in the order given in this module's docstring:
    ``weights=`` (path, ``local-dir:``, ``hf-hub:``) -> ``$APERTURE_WEIGHTS_DIR`` -> the record's Hub
    repo (SHA-256 pinned) -> ``model_cards/<arch>/`` (pinned too). ``overrides`` change the
    architecture (``num_classes=100``): tensors that no longer fit, such as the head, start fresh.
    """
    if name.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)):
        model = _create_from_source(name)
        if pretrained and weights is None:
            weights = name
        if weights is not None:
            load_weights(model, resolve_weights(model.spec.name, weights, download=True))
        return model.to(device).eval()
    record = find_weights(name)  # a tag ("resnet22.fast") names its architecture too
    model = create_model(record.arch if record else name, **overrides)
    if pretrained or weights is not None or "." in name:  # a tag names weights: it implies pretrained
        # Overrides (e.g. num_classes=100 to fine-tune) keep every tensor that still fits and
        # start the rest fresh, like timm's pretrained=True with another num_classes.
        load_weights(model, resolve_weights(name, weights, download=True), strict=not overrides)
    return model.to(device).eval()


class WeightsChoiceError(WeightsError):
    """Not exactly one of --weights / --pretrained / --random-init was given."""


def model_for_command(
    name: str, weights: str | os.PathLike[str] | None = None, pretrained: bool = False, random_init: bool = False
) -> tuple[ResNet, Path | None]:
    """The eval-mode model a command works on, and the weights file it came from (None: random).

    Exactly one source: a file (whose own metadata names a derived architecture, if it was trained
    as one), the published weights, or a seeded random init (benchmarks and tests).
    """
    if sum([weights is not None, pretrained, random_init]) != 1:
        raise WeightsChoiceError(
            "say which weights to use: --weights PATH (a model.safetensors), --pretrained (the "
            "published ones), or --random-init (untrained, for benchmarks and tests) — exactly one"
        )
    record = find_weights(name)
    arch = record.arch if record else name
    if random_init:
        torch.manual_seed(0)
        return create_model(arch).eval(), None
    if pretrained:
        path = resolve_weights(name, download=True)
        return load_weights(create_model(arch), path).eval(), path
    path = resolve_weights(name, weights)
    spec = spec_from_metadata(read_metadata(path))
    if spec is not None and spec.name != arch:
        raise WeightsError(
            f"{str(path)!r} holds weights for {spec.name}, not {arch}; name that model instead "
            f"(e.g. `aperture eval {spec.name} --weights {path}`)"
        )
    return load_weights(create_model(spec if spec is not None else arch), path).eval(), path
