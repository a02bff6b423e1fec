"""Where pretrained weights come from, and the one-line ``load()``.

Resolution order for ``load(name, pretrained=True)``:

1. ``weights=`` — an explicit safetensors path, ``local-dir:DIR`` or ``hf-hub:ORG/NAME[@rev]``;
2. a local directory: ``$APERTURE_WEIGHTS_DIR`` holding ``<name>/model.safetensors`` (or
   ``<name>.safetensors``);
3. the model's Hugging Face Hub repo: the registry's ``hub_repo`` pinned at ``hub_revision``, else
   ``$APERTURE_HUB_ORG/<name>`` (default org ``aperture-zoo``) at ``main``, through
   ``hf_hub_download`` and its cache (``HF_HOME``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` honoured);
   a file whose SHA-256 differs from the registry's pin is refused;
4. ``model_cards/<name>/model.safetensors`` of a source checkout.

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
from .model import ResNet, create_model
from .registry import ModelSpec, get_spec
from .weights import WeightsError, load_weights, read_metadata, spec_from_metadata

WEIGHTS_FILENAME = hub.WEIGHTS_FILENAME
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"


class NoPretrainedWeightsError(WeightsError):
    """No published or local weights could be found for a model."""


def model_cards_dir() -> Path:
    """``model_cards/`` of the source checkout this package runs from (may not exist)."""
    return Path(__file__).resolve().parent.parent / "model_cards"


def hub_source(spec: ModelSpec) -> tuple[str, str | None]:
    """(repo id, pinned revision or None) of a model's published weights."""
    return spec.hub_repo or hub.default_repo_id(spec.name), spec.hub_revision


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
    """(revision, SHA-256) the registry pins for ``filename`` of ``repo_id``, if a model publishes there.

    An explicit revision other than the pinned one is the caller's choice: it is used unpinned.
    """
    from .registry import list_models

    for name in list_models():
        spec = get_spec(name)
        if hub_source(spec)[0] == repo_id and (revision is None or revision == spec.hub_revision):
            return revision or spec.hub_revision, spec.hub_sha256.get(filename)
    return revision, None


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


def local_weights(name: str) -> Path | None:
    """Weights for ``name`` on this disk, without the Hub: $APERTURE_WEIGHTS_DIR, then model_cards/."""
    card_file = model_cards_dir() / name / WEIGHTS_FILENAME
    return _env_dir_weights(name) or (card_file if card_file.is_file() else None)


def published_weights(name: str) -> Path | None:
    """The checkout's copy of the zoo's published weights for ``name``, only if it hashes to the pin.

    Never a user's own run: listings and ``aperture push`` must not mistake an experiment for the
    zoo's weights (an unpinned model has no published weights at all).
    """
    spec = get_spec(name)
    card_file = model_cards_dir() / name / WEIGHTS_FILENAME
    if not spec.hub_sha256.get(WEIGHTS_FILENAME) or not card_file.is_file():
        return None
    try:
        return _check_pin(card_file, spec)
    except WeightsError:
        return None


def resolve_weights(
    name: str, weights: str | os.PathLike[str] | None = None, *, download: bool = False
) -> Path:
    """The weights file ``load(name, pretrained=True)`` would use, following the order above.

    With ``download=False`` (the default, used by ``aperture list``/``info``) the Hub step only
    looks in the client's cache; ``load()`` passes ``download=True``.
    """
    spec = get_spec(name)  # unknown names fail here, with suggestions
    if weights is not None:
        ref = str(weights)
        if ref.startswith(HF_HUB_PREFIX):
            return _from_hf_hub(ref, name, download)
        if ref.startswith(LOCAL_DIR_PREFIX):
            return _from_local_dir(ref, name)
        return Path(weights)

    looked: list[str] = []
    found = _env_dir_weights(name)
    if found is not None:
        return found
    if os.environ.get("APERTURE_WEIGHTS_DIR"):
        looked.append(f"$APERTURE_WEIGHTS_DIR={os.environ['APERTURE_WEIGHTS_DIR']} (no {name}/{WEIGHTS_FILENAME})")

    repo_id, revision = hub_source(spec)
    try:
        return hub.download(repo_id, WEIGHTS_FILENAME, revision,
                            sha256=spec.hub_sha256.get(WEIGHTS_FILENAME), local_only=not download)
    except hub.HubUnavailableError as exc:
        looked.append(f"Hub repo {repo_id}: {exc}")

    card_file = model_cards_dir() / name / WEIGHTS_FILENAME
    if card_file.is_file():
        return _check_pin(card_file, spec)
    looked.append(str(card_file))
    raise NoPretrainedWeightsError(
        f"no published weights for {name}. Looked in: {'; '.join(looked)}. Fix: pass "
        f"weights='runs/.../model.safetensors' (train with `aperture train {name}`), set "
        "APERTURE_WEIGHTS_DIR, or set APERTURE_HUB_ORG / HF_ENDPOINT to where they are published."
    )


def _check_pin(path: Path, spec: ModelSpec) -> Path:
    """``path`` if its SHA-256 is the registry's pin for the published weights (or none is pinned)."""
    from .weights import file_sha256

    pin = spec.hub_sha256.get(WEIGHTS_FILENAME)
    actual = file_sha256(path) if pin else None
    if pin and actual != pin:
        raise WeightsError(
            f"{path} has SHA-256 {actual}, but the published {spec.name} weights are pinned to {pin}: "
            f"the file is damaged or was replaced. Fix: restore it (git checkout -- {path}), or pass "
            "your own file explicitly with weights=PATH"
        )
    return path


def _source_config(source: str) -> dict:
    """config.json of an ``hf-hub:`` or ``local-dir:`` source (architecture, model args)."""
    if source.startswith(HF_HUB_PREFIX):
        repo_id, revision = hub.parse_hf_hub(source)
        revision, pin = _pinned(repo_id, revision, hub.CONFIG_FILENAME)
        path = hub.download(repo_id, hub.CONFIG_FILENAME, revision, sha256=pin)
    else:
        path = Path(source.removeprefix(LOCAL_DIR_PREFIX)).expanduser() / hub.CONFIG_FILENAME
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
    arch = config.get("architecture")
    if not arch:
        raise WeightsError(f"config.json of {source!r} names no 'architecture'; it is not an aperture_zoo repo")
    spec = get_spec(arch)
    args = config.get("model_args") or {}
    ours = spec.arch_dict()
    changes = {k: v for k, v in args.items() if k in ours and k != "name" and ours[k] != v}
    return create_model(spec.replace(**changes) if changes else spec)


def load(
    name: str,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
) -> ResNet:
    """A model in eval mode on ``device``; trained weights when ``pretrained`` or ``weights``.

    ``name`` is a registered model (``"resnet22"``) or a source: ``"hf-hub:ORG/NAME[@rev]"`` or
    ``"local-dir:DIR"``. Weights are searched in the order given in this module's docstring:
    ``weights=`` (path, ``local-dir:``, ``hf-hub:``) -> ``$APERTURE_WEIGHTS_DIR`` -> the Hub repo
    (registry pin or ``$APERTURE_HUB_ORG/<name>``, SHA-256 checked) -> ``model_cards/<name>/``.
    """
    if name.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)):
        model = _create_from_source(name)
        if pretrained and weights is None:
            weights = name
        if weights is not None:
            load_weights(model, resolve_weights(model.spec.name, weights, download=True))
        return model.to(device).eval()
    model = create_model(name)
    if pretrained or weights is not None:
        load_weights(model, resolve_weights(name, weights, download=True))
    return model.to(device).eval()
