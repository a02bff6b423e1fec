"""The one-line refusals of weights folders and Hub downloads name the thing refused, the problem and the
fix, word for word as the user reads them (a message is a promise: a changed or missing part is a bug)."""

from __future__ import annotations

import json
import re
import shutil

import huggingface_hub.constants  # noqa: F401 - imported before HF_* are set, as in a long-lived process
import pytest

from aperture_zoo.catalog import PublishedFolderError, get_weights, refuse_other_weights_folder
from aperture_zoo.files import file_sha256
from aperture_zoo.pretrained import MODEL_CARDS_DIR
from hub_fixtures import hub_env, hub_server, random_weights  # noqa: F401

WHAT = "an eval.json of other weights would sit beside them"


def test_a_folder_of_published_or_other_weights_is_refused_with_the_callers_reason_and_both_digests(tmp_path):
    published = tmp_path / "published"
    published.mkdir()
    shutil.copy(MODEL_CARDS_DIR / "resnet10" / "model.safetensors", published / "model.safetensors")
    with pytest.raises(PublishedFolderError) as info:
        refuse_other_weights_folder(published, "0" * 64, WHAT, fix="Write it elsewhere with --out DIR")
    assert str(info.value) == (f"{published} holds the published resnet10 weights (SHA-256 pinned in the registry); "
                               f"{WHAT}. Write it elsewhere with --out DIR")
    # the published weights themselves: an eval or report of them may sit beside them
    refuse_other_weights_folder(published, file_sha256(published / "model.safetensors"), WHAT)

    other = random_weights(tmp_path / "run2" / "model.safetensors", "resnet10", init_seed=3)
    held = file_sha256(other)
    for mine, shown in (("ab" * 32, "abababababab"), (None, "random")):  # a random model has no file: "random"
        with pytest.raises(PublishedFolderError) as info:
            refuse_other_weights_folder(other.parent, mine, WHAT)
        assert str(info.value) == (f"{other.parent} holds other weights (model.safetensors, SHA-256 {held[:12]}..., "
                                   f"not these {shown}...); {WHAT}. Write it elsewhere with --out DIR")
    refuse_other_weights_folder(other.parent, held, WHAT)  # its own weights: nothing to refuse


def test_bare_weights_beside_a_config_json_of_other_weights_are_refused_with_both_digests_and_the_fix(tmp_path):
    from safetensors.torch import save_file

    from aperture_zoo import load
    from aperture_zoo.model import create_model
    from aperture_zoo.weights import WeightsError

    path = tmp_path / "model.safetensors"
    save_file(create_model("resnet10", channels=(8, 8, 8, 8)).state_dict(), str(path))  # no metadata: bare weights
    other = "ab" * 32
    (tmp_path / "config.json").write_text(json.dumps({"files": {"model.safetensors": {"sha256": other}}}))
    with pytest.raises(WeightsError) as info:
        load(str(path))
    assert str(info.value) == (f"{str(path)!r} has SHA-256 {file_sha256(path)}, but the config.json beside it "
                               f"records {other}: that config describes other weights (its class names would be "
                               "wrong); refusing to load it. Put back the weights it was written for, or write the "
                               "folder again with `aperture card`")


@pytest.fixture
def own_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


@pytest.fixture
def one_file_repo(hub_env):
    from huggingface_hub import HfApi

    if "zoo/msgs" not in hub_env.repos:
        api = HfApi(endpoint=hub_env.url, token="tok-alice")
        api.create_repo("zoo/msgs")
        api.upload_file(path_or_fileobj=b'{"a": 1}', path_in_repo="config.json", repo_id="zoo/msgs")
    return "zoo/msgs"


def test_what_the_hub_refuses_is_named_with_its_fix(hub_env, own_cache, one_file_repo):
    from aperture_zoo import hub

    url = hub_env.url
    with pytest.raises(hub.HubUnavailableError) as info:
        hub.download("zoo/nosuch", "config.json")
    assert str(info.value) == (f"Hub repo zoo/nosuch was not found at {url} (or it is private and the token cannot "
                               "read it); check the repo id, or pass a token with access")
    with pytest.raises(hub.HubUnavailableError) as info:
        hub.download(one_file_repo, "labels.json")
    assert re.fullmatch(rf"{one_file_repo}@main does not contain labels\.json \(404 [^)]*\); check the repo id and "
                        r"revision \(hf-hub:ORG/NAME@REVISION\), or pass weights=PATH / 'local-dir:DIR'",
                        str(info.value)), str(info.value)  # the file, the server's answer, the fix
    with pytest.raises(hub.HubUnavailableError) as info:
        hub.download(one_file_repo, "config.json", "v9")
    assert str(info.value) == (f"{one_file_repo} has no revision 'v9' at {url}; check the branch or commit name "
                               "(hf-hub:ORG/NAME@REVISION)")


def test_offline_without_a_cached_copy_says_how_to_cache_it(hub_env, own_cache, one_file_repo, monkeypatch):
    from huggingface_hub import constants

    from aperture_zoo import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubUnavailableError) as info:
        hub.download(one_file_repo, "config.json")
    assert str(info.value) == (f"config.json of Hub repo {one_file_repo}@main is not in the Hub cache "
                               f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE and "
                               "connect once to cache it, or pass weights=PATH / 'local-dir:DIR'")


def test_a_registry_pinned_file_that_differs_names_the_repo_and_revision_it_came_from(hub_env, own_cache, tmp_path):
    from aperture_zoo import hub
    from aperture_zoo.publish import push

    weights = random_weights(tmp_path / "model.safetensors", "resnet10", init_seed=4)
    commit = push("resnet10", "zoo/pinmsg", weights=weights, token="tok-alice").commit_oid
    pin = get_weights("resnet10").sha256  # pinned to other bytes than the repo holds
    for revision, shown in ((None, "main"), (commit, commit)):
        with pytest.raises(hub.HubIntegrityError) as info:
            hub.download("zoo/pinmsg", revision=revision, sha256=pin)
        assert re.match(rf"model\.safetensors of zoo/pinmsg@{shown} has SHA-256 {file_sha256(weights)}, but the "
                        rf"registry pins {pin}; refusing to load it\. Delete the cached copy", str(info.value)), \
            str(info.value)


def test_a_weights_dir_file_of_another_architecture_is_refused_not_loaded(tmp_path, monkeypatch):
    """load("resnet22", pretrained=True) from $APERTURE_WEIGHTS_DIR must give a resnet22 or refuse: a resnet10 file
    filed under resnet22/ was loaded as it is once the source stopped naming the architecture asked for."""
    import aperture_zoo
    from aperture_zoo.weights import WeightsError

    random_weights(tmp_path / "resnet22" / "model.safetensors", "resnet10")
    monkeypatch.setenv("APERTURE_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsError, match="holds weights for architecture 'resnet10', not 'resnet22'"):
        aperture_zoo.load("resnet22", pretrained=True)


def test_weights_that_do_not_fit_name_what_they_are_for_and_damage_names_the_fix(tmp_path):
    """The mismatch line names the file's architecture ("an unknown architecture" for bare tensors), and the damaged
    file's line its fix."""
    import torch
    from safetensors.torch import load_file, save_file

    from aperture_zoo.model import create_model
    from aperture_zoo.weights import WeightsError, load_weights

    source = random_weights(tmp_path / "r10.safetensors", "resnet10")
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(source)), str(bare))  # no metadata at all
    with pytest.raises(WeightsError, match=r"does not match resnet22 \(file is for an unknown architecture\)"):
        load_weights(create_model("resnet22"), bare)
    tensors = load_file(str(source))
    tensors["bn1.running_var"] = -torch.ones_like(tensors["bn1.running_var"])
    damaged = tmp_path / "damaged.safetensors"
    save_file(tensors, str(damaged))
    with pytest.raises(WeightsError, match=r"negative BatchNorm variances in 1 tensors \(bn1.running_var\); the file is "
                                           r"damaged\. Use an earlier checkpoint or download the file again"):
        load_weights(create_model("resnet10"), damaged)
