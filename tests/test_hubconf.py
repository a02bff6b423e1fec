"""torch.hub entry points from a local clone (source="local": no network)."""

from __future__ import annotations

import pytest
import torch

from hub_fixtures import ROOT, random_weights
from aperture_zoo.registry import list_models
from aperture_zoo.weights import read_state_dict


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_weights(tmp_path_factory.mktemp("w") / "resnet22" / "model.safetensors", "resnet22", init_seed=5)


def _same(model, path) -> bool:
    expected, _ = read_state_dict(path)
    state = model.state_dict()
    return set(state) == set(expected) and all(torch.equal(state[k], v) for k, v in expected.items())


def test_every_model_is_an_entry_point():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    # What torch.hub.list() reports: public callables of hubconf.py.
    entries = [f for f in dir(hubconf) if callable(getattr(hubconf, f)) and not f.startswith("_")]
    assert entries == list_models()
    assert "pretrained" in hubconf.resnet22.__doc__ and hubconf.dependencies


def test_load_untrained_and_with_weights(weights):
    model = torch.hub.load(str(ROOT), "resnet22", source="local", trust_repo=True)
    assert not model.training and model.spec.name == "resnet22" and not _same(model, weights)
    model = torch.hub.load(str(ROOT), "resnet22", source="local", weights=str(weights))
    assert _same(model, weights)


def test_pretrained_from_a_local_dir(weights, monkeypatch):
    monkeypatch.setenv("APERTURE_WEIGHTS_DIR", str(weights.parent.parent))
    model = torch.hub.load(str(ROOT), "resnet22", source="local", pretrained=True)
    assert _same(model, weights)
    monkeypatch.delenv("APERTURE_WEIGHTS_DIR")
    model = torch.hub.load(str(ROOT), "resnet22", source="local", weights=f"local-dir:{weights.parent}")
    assert _same(model, weights)


def test_pretrained_with_a_new_head_keeps_the_backbone(weights):
    model = torch.hub.load(str(ROOT), "resnet22", source="local", weights=str(weights), num_classes=100)
    expected, _ = read_state_dict(weights)
    assert model.fc.out_features == 100
    assert torch.equal(model.state_dict()["conv1.weight"], expected["conv1.weight"])
