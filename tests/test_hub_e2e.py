"""Push and pull through the real, unpatched huggingface_hub client against a local Hub server."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import huggingface_hub.constants  # noqa: F401 - the client is imported before any test sets HF_* (as in a long-lived process)
import pytest

from aperture_zoo.weights import read_metadata
from hub_fixtures import client_env, hub_env, hub_server, random_weights, run_script  # noqa: F401

REPO = "zoo/resnet10"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The published resnet10 weights: `pretrained=True` accepts only the file the registry pins."""
    import shutil

    from aperture_zoo.pretrained import MODEL_CARDS_DIR

    return Path(shutil.copyfile(MODEL_CARDS_DIR / "resnet10" / "model.safetensors",
                                tmp_path_factory.mktemp("run") / "model.safetensors"))


@pytest.fixture(scope="module")
def pushed(hub_server, weights):
    """`aperture push` with the token in HF_TOKEN; returns its output."""
    from typer.testing import CliRunner

    from aperture_zoo.cli import app

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_ENDPOINT", hub_server.url)
        mp.setenv("HF_TOKEN", "tok-alice")
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        result = CliRunner().invoke(app, ["push", "resnet10", "--repo-id", REPO, "--weights", str(weights)])
    assert result.exit_code == 0, result.output
    return result.output


def test_push_creates_repo_in_one_commit_with_timm_layout(hub_server, pushed, weights):
    repo = hub_server.repos[REPO]
    head = repo.history()[0]
    assert f"{hub_server.url}/{REPO}/commit/{head.oid}" in pushed
    assert "tok-alice" not in pushed
    assert len(repo.history()) == 2  # the repo's initial commit + exactly one upload commit
    assert {"model.safetensors", "config.json", "README.md", ".gitattributes"} <= set(head.files)
    assert head.files["model.safetensors"] == weights.read_bytes()
    config = json.loads(head.files["config.json"])
    assert config["architecture"] == "resnet10" and config["num_classes"] == 10
    meta = json.loads(read_metadata(weights)["test_top1"])
    assert config["trained"] is True and config["metrics"]["top1"] == meta  # the weights' own record
    assert head.files["README.md"].startswith(b"---\n")
    assert head.files["LICENSE"] == (Path(__file__).resolve().parent.parent / "LICENSE").read_bytes()  # the MIT text
    assert not any(name.startswith(".aperture") for name in head.files)  # the writer's lock and stage stay home


PULL = """
import json, torch, aperture_zoo
from aperture_zoo.pretrained import resolve_weights
from aperture_zoo.weights import read_state_dict
W = {weights!r}
expected, _ = read_state_dict(W)
x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
ref = aperture_zoo.load("resnet10", weights=W)
def same(m):
    sd = m.state_dict()
    with torch.no_grad():
        return set(sd) == set(expected) and all(torch.equal(sd[k], v) for k, v in expected.items()) \\
            and torch.equal(m(x), ref(x))
def error(fn):
    try:
        fn()
    except Exception as e:
        return [type(e).__name__, str(e)]
"""


def test_load_pretrained_fresh_cache_then_offline(hub_server, pushed, weights, tmp_path):
    hf_home = tmp_path / "hf_home"
    env = client_env(hub_server, hf_home, APERTURE_HUB_ORG="zoo")
    head = hub_server.repos[REPO].history()[0].oid
    online = run_script(PULL.format(weights=str(weights)) + textwrap.dedent(f"""
        m = aperture_zoo.load("resnet10", pretrained=True)
        print(json.dumps(dict(
            same=same(m), path=str(resolve_weights("resnet10")),
            hf_hub=same(aperture_zoo.load("hf-hub:{REPO}", pretrained=True)),
            hf_hub_rev=same(aperture_zoo.load("hf-hub:{REPO}@{head}", pretrained=True)),
            missing=error(lambda: aperture_zoo.load("hf-hub:zoo/nope", pretrained=True)),
        )))
    """), env)
    assert online["same"] and online["hf_hub"] and online["hf_hub_rev"]
    assert online["path"].startswith(str(hf_home)) and head in online["path"]
    kind, message = online["missing"]
    assert kind == "HubUnavailableError" and "zoo/nope" in message and "not found" in message

    requests_before = len(hub_server.requests)
    offline = run_script(PULL.format(weights=str(weights)) + textwrap.dedent(f"""
        import dataclasses, pathlib, tempfile
        import aperture_zoo.pretrained as P
        from aperture_zoo import catalog
        from aperture_zoo.files import file_sha256
        out = dict(same=same(aperture_zoo.load("resnet10", pretrained=True)))
        no_cards = pathlib.Path(tempfile.mkdtemp())  # no checkout fallback
        out["uncached"] = error(lambda: aperture_zoo.load("resnet18", pretrained=True, cards_dir=no_cards))
        catalog.register_weights(dataclasses.replace(catalog.get_weights("resnet10"), hub_repo="{REPO}",
                                 sha256=file_sha256(W)), overwrite=True)
        out["pinned_ok"] = same(aperture_zoo.load("resnet10", pretrained=True))
        blob = P.resolve_weights("resnet10").resolve()
        data = bytearray(blob.read_bytes()); data[-1] ^= 1; blob.write_bytes(bytes(data))
        out["tampered"] = error(lambda: aperture_zoo.load("resnet10", pretrained=True))
        print(json.dumps(out))
    """), {**env, "HF_HUB_OFFLINE": "1"})
    assert len(hub_server.requests) == requests_before  # offline means no traffic at all
    assert offline["same"] and offline["pinned_ok"]
    kind, message = offline["uncached"]
    assert kind == "PublishedWeightsUnavailableError"
    assert "zoo/resnet18" in message and "HF_HUB_OFFLINE" in message and "not in the Hub cache" in message
    kind, message = offline["tampered"]
    assert kind == "HubIntegrityError" and "SHA-256" in message and "refusing" in message


def test_push_again_without_changes_makes_no_commit(hub_env, pushed, weights):
    from aperture_zoo.publish import push

    before = [c.oid for c in hub_env.repos[REPO].history()]
    result = push("resnet10", REPO, weights=weights, token="tok-alice")
    assert result.changed is False
    assert result.commit_oid == before[0]
    assert [c.oid for c in hub_env.repos[REPO].history()] == before


def test_push_changed_weights_makes_a_new_commit(hub_env, weights, tmp_path):
    from aperture_zoo.publish import push

    first = push("resnet10", "zoo/changes", weights=weights, token="tok-alice")
    other = random_weights(tmp_path / "model.safetensors", "resnet10", init_seed=4)
    second = push("resnet10", "zoo/changes", weights=other, token="tok-alice")
    history = hub_env.repos["zoo/changes"].history()
    assert first.changed and second.changed and second.commit_oid != first.commit_oid
    assert [c.oid for c in history[:2]] == [second.commit_oid, first.commit_oid]
    assert history[0].files["model.safetensors"] == other.read_bytes()
    config = json.loads(history[0].files["config.json"])
    assert config["trained"] is False and "metrics" not in config  # random weights claim nothing


def test_wrong_token_is_a_clear_error(hub_env, pushed, weights):
    from aperture_zoo.hub import HubError
    from aperture_zoo.publish import push

    with pytest.raises(HubError, match=r"rejected the token \(from --token\) \(401\)") as info:
        push("resnet10", REPO, weights=weights, token="not-a-token")
    assert "not-a-token" not in str(info.value) and "invalid or expired" in str(info.value)


def test_repo_of_someone_else_is_a_clear_error(hub_env, pushed, weights):
    from aperture_zoo.hub import HubError
    from aperture_zoo.publish import push

    with pytest.raises(HubError, match=r"\(403\).*belongs to someone else"):
        push("resnet10", REPO, weights=weights, token="tok-bob")


def test_new_repo_in_someone_elses_namespace_is_a_clear_error(hub_env, weights):
    from aperture_zoo.hub import HubError
    from aperture_zoo.publish import push

    with pytest.raises(HubError, match=r"not allowed to push to bob/resnet10 \(403\).*belongs to someone else"):
        push("resnet10", "bob/resnet10", weights=weights, token="tok-alice")
    assert "bob/resnet10" not in hub_env.repos


def test_unusable_weights_are_refused_before_any_upload(hub_env, weights, tmp_path):
    import pickle

    from aperture_zoo.hub import HubError
    from aperture_zoo.publish import push

    other = random_weights(tmp_path / "r20.safetensors", "resnet20")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(weights.read_bytes()[:1000])
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(pickle.dumps({"conv1.weight": 0}, protocol=2))
    before = len(hub_env.requests)
    for path, message in ((other, "holds weights for architecture 'resnet20', not 'resnet10'"),
                          (corrupt, "truncated or corrupt"), (pickled, "pickle checkpoint, not safetensors")):
        with pytest.raises(HubError, match="not pushing resnet10") as info:
            push("resnet10", "zoo/refused", weights=path, token="tok-alice")
        assert message in str(info.value) and str(path) in str(info.value)
    assert len(hub_env.requests) == before and "zoo/refused" not in hub_env.repos


def test_no_token_is_a_clear_error(hub_env, weights, monkeypatch):
    from huggingface_hub import get_token

    from aperture_zoo.hub import HubError
    from aperture_zoo.publish import push

    if get_token() is not None:
        pytest.skip("a Hugging Face login is stored on this machine")
    with pytest.raises(HubError, match="no Hugging Face token: pass --token, set HF_TOKEN"):
        push("resnet10", REPO, weights=weights)


def test_nothing_to_push(hub_env, monkeypatch, tmp_path):
    from aperture_zoo.hub import HubError
    from aperture_zoo.publish import push

    with pytest.raises(HubError, match="nothing to push for resnet10"):
        push("resnet10", REPO, token="tok-alice", cards_dir=tmp_path)
    with pytest.raises(HubError, match="does not exist"):
        push("resnet10", REPO, weights=tmp_path / "missing.safetensors", token="tok-alice")


def test_unreachable_hub_is_a_clear_error(monkeypatch, weights):
    from ports import refusing_port

    from aperture_zoo.hub import HubUnavailableError, download
    from aperture_zoo.publish import push

    with refusing_port() as port:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        with pytest.raises(HubUnavailableError, match=rf"cannot reach the Hub at http://127.0.0.1:{port}"):
            push("resnet10", REPO, weights=weights, token="tok-alice")
        with pytest.raises(HubUnavailableError, match="cannot be reached"):
            download("zoo/never-cached-repo", revision="0" * 40)


def test_private_repo_on_a_branch(hub_env, weights):
    from aperture_zoo.hub import HubUnavailableError, download
    from aperture_zoo.publish import push

    result = push("resnet10", "alice/private10", weights=weights, token="tok-alice",
                  private=True, revision="v1")
    repo = hub_env.repos["alice/private10"]
    assert repo.private and result.revision == "v1" and result.changed
    assert "model.safetensors" in repo.resolve("v1").files
    assert "model.safetensors" not in repo.resolve("main").files
    with pytest.raises(HubUnavailableError, match="not found"):  # anonymous read of a private repo
        download("alice/private10", "config.json", "v1", token=False)


def test_with_onnx_uploads_the_exported_file_only_if_it_is_of_these_weights(hub_env, weights, tmp_path):
    """Regression: --with-onnx uploaded a model.onnx exported from other weights, its card saying validation passed."""
    import shutil

    from typer.testing import CliRunner

    from aperture_zoo import load
    from aperture_zoo.cli import app
    from aperture_zoo.export.pipeline import export_model
    from aperture_zoo.files import file_sha256
    from aperture_zoo.hub import HubError
    from aperture_zoo.provenance import StaleFileError
    from aperture_zoo.publish import push

    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(weights, run / "model.safetensors")
    with pytest.raises(HubError, match="no exported ONNX model for resnet10"):
        push("resnet10", "zoo/onnx10", weights=run / "model.safetensors", token="tok-alice", with_onnx=True)
    model = load("resnet10", weights=weights)
    export_model(model, run, stem="model", weights_sha256=file_sha256(weights), exporter="legacy", provider="cpu")
    push("resnet10", "zoo/onnx10", weights=run / "model.safetensors", token="tok-alice", with_onnx=True)
    files = hub_env.repos["zoo/onnx10"].resolve("main").files
    assert files["model.onnx"] == (run / "model.onnx").read_bytes()
    readme = files["README.md"].decode()
    assert "- onnx" in readme and "## Exported files: parity with PyTorch" in readme and "validation passed" in readme
    assert file_sha256(run / "model.onnx") in readme  # the card names the exact file its figures are about
    assert 'OnnxClassifier("model.onnx")' in readme and "`model.onnx`, beside this card" in readme  # said resnet10.onnx

    other = tmp_path / "other"  # the same file name, exported from other weights
    random_weights(other / "model.safetensors", "resnet10", init_seed=1)
    export_model(load("resnet10", weights=other / "model.safetensors"), other, stem="model", exporter="legacy",
                 weights_sha256=file_sha256(other / "model.safetensors"), run_validation=False)
    shutil.copyfile(other / "model.onnx", run / "model.onnx")
    before = len(hub_env.repos["zoo/onnx10"].history())
    with pytest.raises(StaleFileError, match=r"model\.onnx' was exported from other weights.*export it again"):
        push("resnet10", "zoo/onnx10", weights=run / "model.safetensors", token="tok-alice", with_onnx=True)
    result = CliRunner().invoke(app, ["push", "resnet10", "--repo-id", "zoo/onnx10", "--weights",
                                      str(run / "model.safetensors"), "--token", "tok-alice", "--with-onnx"])
    assert result.exit_code == 2 and result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert "model.onnx" in result.output and "aperture export resnet10 --onnx" in result.output
    assert len(hub_env.repos["zoo/onnx10"].history()) == before  # nothing uploaded


def test_a_push_leaves_no_file_of_an_earlier_push_beside_its_weights(hub_env, weights, tmp_path):
    """Seventh hostile try, H1: a push added its files and kept the rest, so after `push --with-onnx` of run 1 and a
    push of run 2 the repo served run 1's model.onnx (and its "passed" report) beside run 2's weights."""
    import shutil

    from typer.testing import CliRunner

    from aperture_zoo import load
    from aperture_zoo.cli import app
    from aperture_zoo.export.pipeline import export_model
    from aperture_zoo.files import file_sha256
    from aperture_zoo.publish import push

    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(weights, run / "model.safetensors")
    export_model(load("resnet10", weights=weights), run, stem="model", weights_sha256=file_sha256(weights),
                 exporter="legacy", run_validation=False)
    first = push("resnet10", "zoo/leftovers", weights=run / "model.safetensors", token="tok-alice", with_onnx=True)
    assert first.removed == () and "model.onnx" in hub_env.repos["zoo/leftovers"].resolve("main").files
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_env.url, token="tok-alice")  # the user's own files in the repo (eighth try, F6)
    api.upload_file(path_or_fileobj=b"my notes", path_in_repo="NOTES.md", repo_id="zoo/leftovers")
    api.upload_file(path_or_fileobj=b"a,b", path_in_repo="data/train.csv", repo_id="zoo/leftovers")
    api.upload_file(path_or_fileobj=b"<a/>", path_in_repo="data/voc/0001.xml", repo_id="zoo/leftovers")  # ninth try
    other = random_weights(tmp_path / "other" / "model.safetensors", "resnet10", init_seed=3)
    result = CliRunner().invoke(app, ["push", "resnet10", "--repo-id", "zoo/leftovers", "--weights", str(other),
                                      "--token", "tok-alice"])
    assert result.exit_code == 0, result.output
    files = hub_env.repos["zoo/leftovers"].resolve("main").files
    assert files["NOTES.md"] == b"my notes" and files["data/train.csv"] == b"a,b"  # kept, and said
    assert files["data/voc/0001.xml"] == b"<a/>"  # a model suffix in a subfolder is the user's data, not a model
    assert "kept 3 file(s) of the repo that aperture does not write: NOTES.md, data/train.csv, data/voc/0001.xml" in \
        " ".join(result.output.split())
    del files["NOTES.md"], files["data/train.csv"], files["data/voc/0001.xml"]
    assert files["model.safetensors"] == other.read_bytes()
    assert not {name for name in files if "onnx" in name or name.endswith(".report.json")}, sorted(files)
    assert "removed " in result.output and "model.onnx" in result.output  # said, not silent
    assert set(files) <= {".gitattributes", "README.md", "config.json", "model.safetensors", "LICENSE", "weights.json"}
    assert file_sha256(other) in files["weights.json"].decode()  # what is left describes the new weights

    # pushed from a card folder whose README.md was edited by hand: the Hub gets the generated card, and says so
    from aperture_zoo.cards import write_card

    card = write_card("resnet10", tmp_path / "card", weights=other)
    shutil.copyfile(other, card / "model.safetensors")
    (card / "README.md").write_text("# my own notes\n")
    noted = CliRunner().invoke(app, ["push", "resnet10", "--repo-id", "zoo/leftovers", "--weights",
                                     str(card / "model.safetensors"), "--token", "tok-alice"])
    assert noted.exit_code == 0 and "is not the card aperture generates" in " ".join(noted.output.split())

    commit = hub_env.repos["zoo/leftovers"].resolve("main").oid  # a branch named like a commit would shadow it
    shadow = CliRunner().invoke(app, ["push", "resnet10", "--repo-id", "zoo/leftovers", "--weights", str(other),
                                      "--token", "tok-alice", "--revision", commit])
    assert shadow.exit_code == 2 and "looks like a commit id" in shadow.output, shadow.output
    assert "my own notes" not in hub_env.repos["zoo/leftovers"].resolve("main").files["README.md"].decode()


@pytest.fixture
def own_cache(monkeypatch, tmp_path):
    """A Hub cache of this test's own, so a file it damages is never seen by another run."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def test_unpinned_repo_is_verified_against_its_own_config_json(hub_env, own_cache, tmp_path):
    """Regression: a byte flipped in a cached Hub file of a repo the registry does not pin loaded silently."""
    import aperture_zoo
    from aperture_zoo.hub import HubIntegrityError
    from aperture_zoo.publish import push
    from aperture_zoo.pretrained import resolve_weights

    mine = random_weights(tmp_path / "model.safetensors", "resnet10", init_seed=7)
    push("resnet10", "zoo/experiment", weights=mine, token="tok-alice")
    model = aperture_zoo.load("hf-hub:zoo/experiment", pretrained=True)  # verified, loads
    assert model.spec.name == "resnet10"
    blob = resolve_weights("resnet10", "hf-hub:zoo/experiment").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(HubIntegrityError, match="its config.json records"):
        aperture_zoo.load("hf-hub:zoo/experiment", pretrained=True)


def test_a_repo_without_a_recorded_digest_is_refused(hub_env, own_cache, hub_server, tmp_path):
    from huggingface_hub import HfApi

    import aperture_zoo
    from aperture_zoo.hub import HubIntegrityError

    mine = random_weights(tmp_path / "model.safetensors", "resnet10", init_seed=8)
    api = HfApi(endpoint=hub_server.url, token="tok-alice")
    api.create_repo("zoo/bare")
    api.upload_file(path_or_fileobj=str(mine), path_in_repo="model.safetensors", repo_id="zoo/bare")
    with pytest.raises(HubIntegrityError, match="no SHA-256 to be checked against.*aperture push"):
        aperture_zoo.load("resnet10", weights="hf-hub:zoo/bare")


def test_hf_hub_offline_set_while_the_process_runs_is_honoured(hub_env, own_cache, hub_server, monkeypatch):
    """The client reads HF_HUB_OFFLINE (and HF_ENDPOINT) once, when it is imported (here, at the top of
    this module); setting them later must still be honoured: offline stops all traffic."""
    from huggingface_hub import HfApi, constants

    from aperture_zoo import hub

    api = HfApi(endpoint=hub_server.url, token="tok-alice")
    api.create_repo("zoo/offline")
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="zoo/offline")
    assert not constants.HF_HUB_OFFLINE  # the client was imported without it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub_server.requests)
    with pytest.raises(hub.HubUnavailableError, match="HF_HUB_OFFLINE is set"):
        hub.download("zoo/offline", "config.json")
    assert len(hub_server.requests) == before  # no request at all
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert hub.download("zoo/offline", "config.json").read_bytes() == b"{}"  # online, the file is there


def test_a_pushed_card_says_which_judged_files_the_repo_does_not_hold(hub_env, weights, tmp_path):
    """Seventh hostile try, L3: pushed from an export folder, the README said "validation passed" for resnet10.onnx
    and resnet10.fp16.onnx, which the repo does not hold, and carried the uploaded file's report twice."""
    import shutil

    from aperture_zoo import load
    from aperture_zoo.export.pipeline import export_model
    from aperture_zoo.files import file_sha256
    from aperture_zoo.publish import push

    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copyfile(weights, folder / "model.safetensors")
    export_model(load("resnet10", weights=weights), folder, stem="resnet10", weights_sha256=file_sha256(weights),
                 exporter="legacy", provider="cpu", fp16=True, max_val_images=8)
    assert (folder / "resnet10.fp16.report.json").is_file() and (folder / "resnet10.report.json").is_file()
    push("resnet10", "zoo/absent", weights=folder / "model.safetensors", token="tok-alice", with_onnx=True)
    files = hub_env.repos["zoo/absent"].resolve("main").files
    assert "model.onnx" in files and "model.report.json" in files and "resnet10.report.json" not in files
    readme = " ".join(files["README.md"].decode().split())
    fp16 = readme.split("resnet10.fp16.onnx (", 1)[1].split("resnet10", 1)[0]
    assert "validation passed" in fp16 and "The file is not in this folder" in fp16
    fp32 = readme.split("model.onnx (", 1)[1].split(".onnx", 1)[0]
    assert "validation passed" in fp32 and "not in this folder" not in fp32


def test_a_branch_named_like_a_commit_never_answers_for_that_commit(hub_env, own_cache, hub_server, tmp_path):
    """Ninth hostile try, N4: a branch made (through the Hub API) with main's commit id as its name answered
    `hf-hub:REPO@<that commit>` with the branch's weights instead of the commit's."""
    from huggingface_hub import HfApi

    import aperture_zoo
    from aperture_zoo.hub import HubIntegrityError
    from aperture_zoo.publish import push

    first = push("resnet10", "zoo/shadow", weights=random_weights(tmp_path / "a.safetensors", "resnet10"),
                 token="tok-alice")
    aperture_zoo.load("hf-hub:zoo/shadow@" + first.commit_oid, pretrained=True)  # the commit itself: loads
    api = HfApi(endpoint=hub_server.url, token="tok-alice")
    api.create_branch("zoo/shadow", branch=first.commit_oid)
    api.upload_file(path_or_fileobj=b"x", path_in_repo="other.txt", repo_id="zoo/shadow", revision=first.commit_oid)
    import shutil
    from huggingface_hub import constants

    shutil.rmtree(constants.HF_HUB_CACHE, ignore_errors=True)  # a fresh cache asks the server again
    with pytest.raises(HubIntegrityError, match="named like that commit id and shadows it"):
        aperture_zoo.load("hf-hub:zoo/shadow@" + first.commit_oid, pretrained=True)
