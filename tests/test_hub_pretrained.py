"""load()/resolve_weights(): the resolution order, timm-style sources and their errors (no network)."""

from __future__ import annotations

import socket

import pytest
import torch

import aperture_zoo.pretrained as pretrained
from hub_fixtures import hub_env, hub_server, random_weights  # noqa: F401
from aperture_zoo.cards import write_card
from aperture_zoo.hub import HubError
from aperture_zoo.pretrained import NoPretrainedWeightsError, load, resolve_weights
from aperture_zoo.weights import read_state_dict


@pytest.fixture
def dead_hub(monkeypatch, tmp_path):
    """HF_ENDPOINT on a closed port and an empty model_cards/: only local sources can answer."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("APERTURE_HUB_ORG", "someorg")
    for var in ("HF_HUB_OFFLINE", "APERTURE_WEIGHTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    cards = tmp_path / "model_cards"
    monkeypatch.setattr(pretrained, "model_cards_dir", lambda: cards)
    return cards


@pytest.fixture(scope="module")
def two_weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("w")
    return (random_weights(root / "a" / "resnet20" / "model.safetensors", "resnet20", init_seed=1),
            random_weights(root / "b" / "resnet20" / "model.safetensors", "resnet20", init_seed=2))


def _same(model, path) -> bool:
    expected, _ = read_state_dict(path)
    return all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())


def test_resolution_order_local_sources(dead_hub, two_weights, monkeypatch):
    env_file, card_file = two_weights
    dead_hub.mkdir()
    (dead_hub / "resnet20").symlink_to(card_file.parent)
    assert resolve_weights("resnet20", download=True) == dead_hub / "resnet20" / "model.safetensors"
    monkeypatch.setenv("APERTURE_WEIGHTS_DIR", str(env_file.parent.parent))
    assert resolve_weights("resnet20", download=True) == env_file
    assert resolve_weights("resnet20", card_file) == card_file  # weights= wins over everything
    assert _same(load("resnet20", pretrained=True), env_file)
    assert _same(load("resnet20", weights=f"local-dir:{card_file.parent}"), card_file)


def test_nothing_found_lists_every_place_and_the_fix(dead_hub, monkeypatch, tmp_path):
    monkeypatch.setenv("APERTURE_WEIGHTS_DIR", str(tmp_path / "empty"))
    with pytest.raises(NoPretrainedWeightsError) as info:
        load("resnet24", pretrained=True)
    message = str(info.value)
    assert "$APERTURE_WEIGHTS_DIR=" in message and "Hub repo someorg/resnet24" in message
    assert "cannot be reached" in message and str(dead_hub / "resnet24" / "model.safetensors") in message
    assert "aperture train resnet24" in message


def test_listing_never_downloads(hub_env, monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained, "model_cards_dir", lambda: tmp_path)
    monkeypatch.setenv("APERTURE_HUB_ORG", "zoo")
    before = len(hub_env.requests)
    with pytest.raises(NoPretrainedWeightsError, match="local lookup only"):
        resolve_weights("resnet32")  # what `aperture list` / `aperture info` call
    assert len(hub_env.requests) == before


def test_local_dir_source_takes_the_architecture_from_config(two_weights, tmp_path):
    _, weights = two_weights
    folder = tmp_path / "exported"
    write_card("resnet20", folder, run_dir=weights.parent)
    model = load(f"local-dir:{folder}", pretrained=True)
    assert model.spec.name == "resnet20" and _same(model, weights)
    assert not _same(load(f"local-dir:{folder}"), weights)  # timm: pretrained=False builds only
    with pytest.raises(NoPretrainedWeightsError, match="holds no weights for resnet20"):
        load("resnet20", weights=f"local-dir:{tmp_path / 'nowhere'}")


def test_bad_hf_hub_reference(dead_hub):
    with pytest.raises(HubError, match="invalid Hub repo id 'not-a-repo'; use the form ORG/NAME"):
        load("hf-hub:not-a-repo", pretrained=True)
