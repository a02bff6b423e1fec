"""load()/resolve_weights(): the resolution order, timm-style sources and their errors (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import aperture_zoo.pretrained as pretrained
from hub_fixtures import hub_env, hub_server, random_weights  # noqa: F401
from ports import refusing_port
from aperture_zoo.cards import write_card
from aperture_zoo.hub import HubError
from aperture_zoo.pretrained import NoPretrainedWeightsError, load, resolve_weights
from aperture_zoo.catalog import get_weights
from aperture_zoo.files import file_sha256
from aperture_zoo.weights import WeightsError, read_state_dict

CHECKOUT_CARDS = pretrained.MODEL_CARDS_DIR


@pytest.fixture
def dead_hub(monkeypatch, tmp_path):
    """HF_ENDPOINT on a closed port and an empty cards folder (pass it as cards_dir): only local sources can answer."""
    with refusing_port() as port:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("APERTURE_HUB_ORG", "someorg")
        for var in ("HF_HUB_OFFLINE", "APERTURE_WEIGHTS_DIR"):
            monkeypatch.delenv(var, raising=False)
        yield tmp_path / "model_cards"


@pytest.fixture(scope="module")
def two_weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("w")
    return (random_weights(root / "a" / "resnet20" / "model.safetensors", "resnet20", init_seed=1),
            random_weights(root / "b" / "resnet20" / "model.safetensors", "resnet20", init_seed=2))


def _same(model, path) -> bool:
    expected, _ = read_state_dict(path)
    return all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())


def test_resolution_order_local_sources(dead_hub, two_weights, monkeypatch, tmp_path):
    env_file, other = two_weights
    published = CHECKOUT_CARDS
    dead_hub.mkdir()
    (dead_hub / "resnet20").symlink_to(published / "resnet20")  # the checkout's published, pinned file
    card_file = dead_hub / "resnet20" / "model.safetensors"
    assert resolve_weights("resnet20", download=True, cards_dir=dead_hub) == card_file
    monkeypatch.setenv("APERTURE_WEIGHTS_DIR", str(env_file.parent.parent))
    assert resolve_weights("resnet20", download=True, cards_dir=dead_hub) == env_file  # a folder the user names
    assert resolve_weights("resnet20", other, cards_dir=dead_hub) == other  # weights= wins over everything
    assert _same(load("resnet20", pretrained=True, cards_dir=dead_hub), env_file)
    assert _same(load("resnet20", weights=f"local-dir:{other.parent}"), other)


def test_checkout_weights_that_differ_from_the_pin_are_refused(dead_hub, two_weights):
    _, other = two_weights
    (dead_hub / "resnet20").mkdir(parents=True)
    (dead_hub / "resnet20" / "model.safetensors").write_bytes(other.read_bytes())
    pin = get_weights("resnet20").sha256
    with pytest.raises(WeightsError, match=f"SHA-256 {file_sha256(other)}.*pinned to {pin}.*git checkout"):
        load("resnet20", pretrained=True, cards_dir=dead_hub)


def test_nothing_found_lists_every_place_and_the_fix(dead_hub, monkeypatch, tmp_path):
    from aperture_zoo.pretrained import PublishedWeightsUnavailableError

    monkeypatch.setenv("APERTURE_WEIGHTS_DIR", str(tmp_path / "empty"))
    with pytest.raises(PublishedWeightsUnavailableError) as info:
        load("resnet24", pretrained=True, cards_dir=dead_hub)
    message = str(info.value)
    assert message.startswith("the published weights resnet24.fast could not be fetched")
    assert "$APERTURE_WEIGHTS_DIR=" in message and "someorg/resnet24" in message
    assert "cannot be reached" in message and str(dead_hub / "resnet24") in message
    assert isinstance(info.value, NoPretrainedWeightsError)  # callers catching the old error still do
    assert info.value.tag == "resnet24.fast"  # which published weights to fetch once connected


def test_listing_never_downloads(hub_env, monkeypatch, tmp_path):
    monkeypatch.setenv("APERTURE_HUB_ORG", "zoo")
    before = len(hub_env.requests)
    with pytest.raises(NoPretrainedWeightsError, match="local lookup only"):
        resolve_weights("resnet32", cards_dir=tmp_path)  # what `aperture list` / `aperture info` call
    assert len(hub_env.requests) == before


def test_local_dir_source_takes_the_architecture_from_config(two_weights, tmp_path):
    _, weights = two_weights
    folder = tmp_path / "exported"
    write_card("resnet20", folder, run_dir=weights.parent)
    model = load(f"local-dir:{folder}", pretrained=True)
    assert model.spec.name == "resnet20" and _same(model, weights)
    assert _same(load(f"local-dir:{folder}"), weights)  # a source names a file: its weights, like a path
    assert not _same(load(f"local-dir:{folder}", pretrained=False), weights)  # the architecture, asked for
    with pytest.raises(NoPretrainedWeightsError, match="holds no weights for resnet20"):
        load("resnet20", weights=f"local-dir:{tmp_path / 'nowhere'}")


def test_bad_hf_hub_reference(dead_hub):
    with pytest.raises(HubError, match="invalid Hub repo id 'not-a-repo'; use the form ORG/NAME"):
        load("hf-hub:not-a-repo", pretrained=True)


def test_registry_pins_revision_and_every_file_digest(hub_env, monkeypatch, tmp_path):
    """A registered Hub repo is read at the pinned commit, and config.json is checked like the weights."""
    import dataclasses

    from huggingface_hub import constants

    from aperture_zoo import catalog
    from aperture_zoo.hub import HubIntegrityError
    from aperture_zoo.publish import push
    from aperture_zoo.files import file_sha256

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))  # not the user's cache
    first = random_weights(tmp_path / "1" / "model.safetensors", "resnet10", init_seed=1)
    second = random_weights(tmp_path / "2" / "model.safetensors", "resnet10", init_seed=2)
    pinned = push("resnet10", "zoo/pinned10", weights=first, token="tok-alice")
    push("resnet10", "zoo/pinned10", weights=second, token="tok-alice")  # main moves on
    config = hub_env.repos["zoo/pinned10"].resolve(pinned.commit_oid).files["config.json"]
    (tmp_path / "config.json").write_bytes(config)
    record = dataclasses.replace(
        catalog.get_weights("resnet10"), hub_repo="zoo/pinned10", revision=pinned.commit_oid,
        sha256=file_sha256(first), config_sha256=file_sha256(tmp_path / "config.json"))
    monkeypatch.setitem(catalog._WEIGHTS, "resnet10.fast", record)

    assert _same(load("resnet10", pretrained=True), first)  # the pinned commit, not main
    assert _same(load("hf-hub:zoo/pinned10", pretrained=True), first)
    head = hub_env.repos["zoo/pinned10"].history()[0].oid
    assert _same(load(f"hf-hub:zoo/pinned10@{head}", pretrained=True), second)  # explicit rev: unpinned

    monkeypatch.setitem(catalog._WEIGHTS, "resnet10.fast", dataclasses.replace(record, config_sha256="0" * 64))
    with pytest.raises(HubIntegrityError, match=r"config.json of zoo/pinned10@.*refusing to load it"):
        load("hf-hub:zoo/pinned10", pretrained=True)


def test_bad_token_and_unknown_revision_on_download(hub_env, monkeypatch, tmp_path):
    from huggingface_hub import constants

    from aperture_zoo.hub import HubError, HubUnavailableError
    from aperture_zoo.publish import push

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    weights = random_weights(tmp_path / "model.safetensors", "resnet10")
    push("resnet10", "zoo/tokens10", weights=weights, token="tok-alice")
    with pytest.raises(HubUnavailableError, match=r"zoo/tokens10 has no revision 'v9'.*ORG/NAME@REVISION"):
        load("hf-hub:zoo/tokens10@v9", pretrained=True)
    monkeypatch.setenv("HF_TOKEN", "expired-token")
    monkeypatch.setenv("APERTURE_HUB_ORG", "zoo")
    for call in (lambda: load("resnet10", pretrained=True, cards_dir=tmp_path / "no_cards"),
                 lambda: load("hf-hub:zoo/tokens10")):
        with pytest.raises(HubError, match=r"rejected the token \(from HF_TOKEN\) \(401\).*unset it") as info:
            call()
        assert "expired-token" not in str(info.value)


def test_published_but_unreachable_says_so_first(dead_hub, monkeypatch):
    """Found by a user: offline without a checkout copy, the error said 'no published weights'."""
    from typer.testing import CliRunner

    from aperture_zoo.cli import app
    from aperture_zoo.pretrained import PublishedWeightsUnavailableError

    with pytest.raises(PublishedWeightsUnavailableError,
                       match=r"^the published weights resnet22\.fast could not be fetched: .*cannot be reached"):
        load("resnet22", pretrained=True, cards_dir=dead_hub)
    monkeypatch.setattr(pretrained, "MODEL_CARDS_DIR", dead_hub)  # the CLI has no flag for it: the checkout's default
    result = CliRunner().invoke(app, ["samples", "resnet22"])
    assert result.exit_code == 1 and "not run" in result.output and "could not be fetched" in result.output
    info = CliRunner().invoke(app, ["info", "resnet22"])
    assert "published as resnet22.fast" in info.output


def _count_opens(monkeypatch, target: Path) -> list[str]:
    """Every open() of ``target`` from Python, and safetensors' own file reader refused outright."""
    import builtins
    import io

    import safetensors

    opened: list[str] = []
    real_open = io.open

    def counting_open(file, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if isinstance(file, (str, Path)) and Path(file).resolve() == target.resolve():
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def no_safe_open(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("safe_open re-opened the weights file")

    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(safetensors, "safe_open", no_safe_open)
    return opened


def test_load_reads_the_weights_file_once_and_checks_its_pin(dead_hub, monkeypatch):
    dead_hub.mkdir()
    (dead_hub / "resnet20").symlink_to(CHECKOUT_CARDS / "resnet20")  # published and pinned
    card_file = dead_hub / "resnet20" / "model.safetensors"
    opened = _count_opens(monkeypatch, card_file)
    model = load("resnet20", pretrained=True, cards_dir=dead_hub)
    monkeypatch.undo()
    assert len(opened) == 1  # one read: hashed against the pin and parsed from the same bytes
    assert _same(model, card_file)


def test_the_source_is_resolved_once_per_load(dead_hub, monkeypatch):
    from aperture_zoo import catalog

    dead_hub.mkdir()
    (dead_hub / "resnet20").symlink_to(CHECKOUT_CARDS / "resnet20")
    lookups: list[str] = []
    real = catalog.find_weights
    monkeypatch.setattr(pretrained, "find_weights", lambda name: lookups.append(name) or real(name))
    load("resnet20", pretrained=True, cards_dir=dead_hub)
    assert lookups == ["resnet20"]
    lookups.clear()
    load("resnet20.fast", cards_dir=dead_hub)  # a tag implies pretrained
    assert lookups == ["resnet20.fast"]


def test_fetch_weights_is_resolve_then_fetch_then_read(dead_hub, two_weights):
    from aperture_zoo.pretrained import fetch_weights, resolve_source

    _, other = two_weights
    source = resolve_source("resnet20", cards_dir=dead_hub)
    assert (source.kind, source.location, source.pin) == ("hub", "someorg/resnet20", get_weights("resnet20").sha256)
    assert source.fallback is not None and source.fallback.kind == "checkout"
    assert Path(source.fallback.location) == dead_hub / "resnet20" / "model.safetensors"
    loaded = fetch_weights("resnet20", other, cards_dir=dead_hub)
    assert (loaded.source.kind, loaded.path, loaded.sha256) == ("file", other, file_sha256(other))
    assert loaded.metadata["arch"] == "resnet20" and _same(pretrained.model_from(loaded), other)


def test_the_cards_folder_is_a_parameter(tmp_path):
    from aperture_zoo.pretrained import published_weights

    assert published_weights("resnet10", cards_dir=tmp_path) is None  # an empty folder: nothing published
    (tmp_path / "resnet10").symlink_to(CHECKOUT_CARDS / "resnet10")
    assert published_weights("resnet10", cards_dir=tmp_path) == tmp_path / "resnet10" / "model.safetensors"
    assert published_weights("resnet10") == CHECKOUT_CARDS / "resnet10" / "model.safetensors"  # the default
