"""The README's integrity promises, each stated as what a user sees when it is broken.

"its SHA-256 is pinned in the registry: ``load(name, pretrained=True)`` refuses any other file, from
the Hub, its cache or a checkout"; "``--init`` takes a published tag (resolved and SHA-256 pinned
exactly as ``load()`` does)"; an unpinned Hub file is checked against the ``config.json`` of its own
commit; "a temperature that is not finite and above 0 is refused when the file is loaded".
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch

import aperture_zoo.pretrained as pretrained
from aperture_zoo.catalog import get_weights
from aperture_zoo.files import file_sha256
from aperture_zoo.weights import WeightsError, read_state_dict
from hub_fixtures import ROOT, hub_env, hub_server, random_weights  # noqa: F401
from ports import refusing_port

NAME = "resnet20"


@pytest.fixture
def tampered_checkout(monkeypatch, tmp_path) -> Path:
    """The Hub unreachable, and the checkout's copy of the published resnet20 file with one byte changed.

    Only the checkout can answer, so every path that resolves a tag must find the tampered file and refuse it.
    """
    with refusing_port() as port:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("APERTURE_HUB_ORG", "someorg")
        for var in ("HF_HUB_OFFLINE", "APERTURE_WEIGHTS_DIR"):
            monkeypatch.delenv(var, raising=False)
        cards = tmp_path / "model_cards"
        (cards / NAME).mkdir(parents=True)
        data = bytearray((pretrained.MODEL_CARDS_DIR / NAME / "model.safetensors").read_bytes())
        data[-1] ^= 0x01  # the last byte of a tensor: still a valid safetensors file, other weights
        (cards / NAME / "model.safetensors").write_bytes(bytes(data))
        monkeypatch.setattr(pretrained, "MODEL_CARDS_DIR", cards)  # the default every caller without cards_dir uses
        yield cards / NAME / "model.safetensors"


def _tag_paths(cards: Path):
    """Every public way a published tag (or a bare name meaning its default tag) becomes a weights file."""
    import importlib.util

    from aperture_zoo.cli.common import model_for_command
    from aperture_zoo.demo import published_weights as demo_weights
    from aperture_zoo.registry import get_spec
    from aperture_zoo.train.finetune import resolve_init

    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)

    return {
        "load(name, pretrained=True)": lambda: pretrained.load(NAME, pretrained=True),
        "load(tag)": lambda: pretrained.load(f"{NAME}.fast"),
        "load(tag, num_classes=100)": lambda: pretrained.load(f"{NAME}.fast", num_classes=100),
        "load(name, cards_dir=...)": lambda: pretrained.load(NAME, pretrained=True, cards_dir=cards),
        "fetch_weights(tag)": lambda: pretrained.fetch_weights(f"{NAME}.fast"),
        "resolve_weights(name, download=True)": lambda: pretrained.resolve_weights(NAME, download=True),
        "resolve_weights(tag) (aperture list/info)": lambda: pretrained.resolve_weights(f"{NAME}.fast"),
        "train --init tag": lambda: resolve_init(f"{NAME}.fast", get_spec(NAME)),
        "eval/export --pretrained": lambda: model_for_command(NAME, None, True, False),
        "demo": lambda: demo_weights(NAME),
        "torch.hub entry point": lambda: getattr(hubconf, NAME)(pretrained=True),
    }


def test_a_tampered_checkout_file_is_refused_by_every_path_that_resolves_a_tag(tampered_checkout: Path) -> None:
    returned = {}
    for what, call in _tag_paths(tampered_checkout.parent.parent).items():
        try:
            out = call()
        except WeightsError as exc:
            assert "SHA-256" in str(exc) and "pinned" in str(exc), (what, str(exc))
            continue
        if out is not None:  # the demo answers None for "no usable weights"
            returned[what] = out
    assert not returned, f"the tampered file was used by: {', '.join(returned)}"
    # and never listed as the zoo's published file (aperture push, aperture list)
    assert pretrained.published_weights(NAME) is None


def test_the_untampered_checkout_file_loads_by_the_same_paths(tampered_checkout: Path) -> None:
    """The refusal above is the pin's doing: the published bytes load through the same paths."""
    tampered_checkout.write_bytes((ROOT / "model_cards" / NAME / "model.safetensors").read_bytes())
    assert file_sha256(tampered_checkout) == get_weights(NAME).sha256
    model = pretrained.load(f"{NAME}.fast")
    want, _ = read_state_dict(tampered_checkout)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in want.items())
    assert pretrained.published_weights(NAME) == tampered_checkout


def test_an_unpinned_hub_file_is_checked_against_its_own_commits_config(hub_env, monkeypatch, tmp_path) -> None:
    """``hf-hub:ORG/NAME@commit`` of a repo the registry does not pin: the weights of that commit are
    checked against that commit's config.json, not the config of the branch head (which pins other weights)."""
    from huggingface_hub import constants

    from aperture_zoo.hub import HubIntegrityError
    from aperture_zoo.publish import push

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    first = random_weights(tmp_path / "1" / "model.safetensors", "resnet10", init_seed=1)
    second = random_weights(tmp_path / "2" / "model.safetensors", "resnet10", init_seed=2)
    old = push("resnet10", "zoo/unpinned10", weights=first, token="tok-alice")
    push("resnet10", "zoo/unpinned10", weights=second, token="tok-alice")  # main now pins the second file
    model = pretrained.load(f"hf-hub:zoo/unpinned10@{old.commit_oid}", pretrained=True)
    want, _ = read_state_dict(first)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in want.items())
    model = pretrained.load("hf-hub:zoo/unpinned10", pretrained=True)  # main: the second file
    want, _ = read_state_dict(second)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in want.items())

    # a commit whose config.json records other weights than the commit holds is refused
    repo = hub_env.repos["zoo/unpinned10"]
    head = repo.history()[0].oid
    cached = Path(constants.HF_HUB_CACHE) / "models--zoo--unpinned10" / "snapshots" / head / "model.safetensors"
    cached.unlink()  # the cached link: replace the head's weights in the cache by the first file's bytes
    cached.write_bytes(first.read_bytes())
    with pytest.raises(HubIntegrityError, match="its config.json records"):
        pretrained.load("hf-hub:zoo/unpinned10", pretrained=True)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "0", "-0.5", "warm", ""])
def test_a_bad_temperature_in_a_weights_file_is_refused_at_load(tmp_path: Path, bad: str) -> None:
    from aperture_zoo.calibration import TemperatureError

    path = random_weights(tmp_path / "model.safetensors", "resnet10", temperature=bad)
    with pytest.raises(TemperatureError, match="temperature in"):
        pretrained.load("resnet10", weights=path)


def test_a_good_temperature_in_a_weights_file_is_the_models(tmp_path: Path) -> None:
    path = random_weights(tmp_path / "model.safetensors", "resnet10", temperature="0.8")
    model = pretrained.load("resnet10", weights=path)
    assert model.temperature is not None and math.isclose(model.temperature, 0.8)


def test_a_tampered_cached_hub_file_is_refused_offline_too(monkeypatch, tmp_path) -> None:
    """Offline (``HF_HUB_OFFLINE``, or the Hub unreachable) the client's cache serves an unpinned repo's
    weights: they are still checked against the cached ``config.json`` of their commit, never used unverified."""
    import json

    from huggingface_hub import constants

    from aperture_zoo.hub import HubIntegrityError

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pushed = random_weights(tmp_path / "1" / "model.safetensors", "resnet10", init_seed=1)
    other = random_weights(tmp_path / "2" / "model.safetensors", "resnet10", init_seed=2)
    repo, commit = tmp_path / "cache" / "models--zoo--offline10", "a" * 40  # the client's cache layout
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    config = {"files": {"model.safetensors": {"sha256": file_sha256(pushed)}}}  # what `aperture push` records
    (snapshot / "config.json").write_text(json.dumps(config))
    (snapshot / "model.safetensors").write_bytes(other.read_bytes())  # the cached weights, replaced
    with pytest.raises(HubIntegrityError, match="its config.json records"):
        pretrained.load("hf-hub:zoo/offline10", pretrained=True)
    (snapshot / "model.safetensors").write_bytes(pushed.read_bytes())  # the recorded bytes: the same load works
    model = pretrained.load("hf-hub:zoo/offline10", pretrained=True)
    want, _ = read_state_dict(pushed)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in want.items())


def test_a_private_unpinned_repo_is_checked_with_the_token_it_was_read_with(hub_env, monkeypatch, tmp_path) -> None:
    """The token given for a private repo reads its config.json (the pin) too; a token the Hub rejects
    while fetching that pin is named by where it came from, like every other 401."""
    from huggingface_hub import constants

    import json

    from huggingface_hub import CommitOperationAdd, HfApi

    from aperture_zoo.hub import HubIntegrityError, download

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    weights = b"the weights' bytes"  # what `aperture push` writes: the file and its digest in config.json
    config = json.dumps({"files": {"model.safetensors": {"sha256": hashlib.sha256(weights).hexdigest()}}}).encode()
    api = HfApi(endpoint=hub_env.url, token="tok-alice")
    api.create_repo("alice/private-pin", private=True)
    commit = api.create_commit("alice/private-pin", [CommitOperationAdd("model.safetensors", weights),
                                                     CommitOperationAdd("config.json", config)],
                               commit_message="weights").oid
    got = download("alice/private-pin", token="tok-alice")  # no HF_TOKEN: only the given token can read it
    assert got.read_bytes() == weights

    snapshot = Path(constants.HF_HUB_CACHE) / "models--alice--private-pin" / "snapshots" / commit
    (snapshot / "config.json").unlink()  # the weights of that commit are cached, their config.json is not
    with pytest.raises(HubIntegrityError, match=r"rejected the token \(from token=\) \(401\)"):
        download("alice/private-pin", revision=commit, token="tok-expired")


def test_a_timeout_of_a_requests_based_client_is_unreachable_not_a_traceback(hub_env, monkeypatch) -> None:
    """huggingface_hub before 1.0 speaks HTTP through requests, whose read timeout is neither a
    ``ConnectionError`` nor a ``TimeoutError``: it is still the one-line "cannot reach the Hub"."""
    import sys
    import types

    import huggingface_hub

    from aperture_zoo.hub import HubUnavailableError, download

    fake = types.ModuleType("requests")  # the exception tree requests has
    fake.RequestException = type("RequestException", (OSError,), {})
    fake.ConnectionError = type("ConnectionError", (fake.RequestException,), {})
    fake.Timeout = type("Timeout", (fake.RequestException,), {})
    read_timeout = type("ReadTimeout", (fake.Timeout,), {})
    monkeypatch.setitem(sys.modules, "requests", fake)

    def slow(*args, **kwargs):
        raise read_timeout("HTTPSConnectionPool: Read timed out. (read timeout=10)")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", slow)
    with pytest.raises(HubUnavailableError, match=rf"^cannot reach the Hub at {hub_env.url} to download from "
                                                  r"zoo/slow10 \(ReadTimeout\); check the network"):
        download("zoo/slow10")
