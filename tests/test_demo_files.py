"""The demo's models folder and server: your file never takes a published file's place, copies know
their source, and the server serves its two folders only, to this machine only."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from aperture_zoo import demo
from aperture_zoo.demo_server import DemoServer, host_allowed
from aperture_zoo.export.onnx_export import to_onnx
from aperture_zoo.files import file_sha256
from aperture_zoo.model import create_model
from aperture_zoo.weights import save_weights

WEB = Path(__file__).resolve().parent.parent / "apps" / "web"


def _tiny(seed: int, **spec: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet10", channels=(8, 16, 16, 32), **spec).eval()


@pytest.fixture
def published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A models folder as `aperture demo` leaves it for resnet10 (its "published" weights are a tiny model)."""
    from aperture_zoo.pretrained import fetch_weights

    weights = save_weights(_tiny(0), tmp_path / "weights" / "model.safetensors")
    monkeypatch.setattr(demo, "published_weights", lambda name: fetch_weights(name, weights) if name == "resnet10" else None)
    exports: list[str] = []
    real = demo.export_for_demo

    def fast(model: Any, out: Path, sha: str | None = None, **kw: Any) -> demo.DemoModel:
        exports.append(model.spec.name)
        return real(model, out, sha, validate=False, exporter="legacy")

    monkeypatch.setattr(demo, "export_for_demo", fast)
    out = tmp_path / "models"
    demo.prepare_models(out, ["resnet10"])
    return dict(out=out, exports=exports, weights=weights)


def test_your_file_of_a_published_name_gets_its_own_entry_and_its_own_labels(published: dict, tmp_path: Path) -> None:
    """Regression: `aperture demo --onnx resnet10.onnx` silently replaced the published resnet10.onnx and
    kept the published labels for it."""
    out = published["out"]
    before = file_sha256(out / "resnet10.onnx")
    model = _tiny(3, num_classes=3, class_names=("cat <b>", "dog", "ship"))
    model.temperature = 1.5
    mine = to_onnx(model, tmp_path / "mine" / "resnet10.onnx", exporter="legacy")
    (entry,) = demo.add_onnx_files(out, [mine])
    assert entry.name == "resnet10-2" and entry.file.startswith("own/") and (out / entry.file).is_file()
    assert entry.labels == ["cat <b>", "dog", "ship"] and entry.files[0].temperature == 1.5
    assert entry.source_sha256 == file_sha256(mine) == entry.files[0].sha256
    assert file_sha256(out / "resnet10.onnx") == before  # the published file is untouched
    entries = demo.prepare_models(out, ["resnet10"])
    assert published["exports"] == ["resnet10"]  # still reused: every file is the one recorded
    assert next(e for e in entries if e.name == "resnet10").labels[0] == "airplane"


def test_demo_copies_follow_their_source(published: dict, tmp_path: Path) -> None:
    out = published["out"]
    mine = to_onnx(_tiny(3), tmp_path / "mine.onnx", exporter="legacy")
    (first,) = demo.add_onnx_files(out, [mine])
    to_onnx(_tiny(4), mine, exporter="legacy")  # the file changed since
    (second,) = demo.add_onnx_files(out, [mine])
    assert second.source_sha256 == file_sha256(mine) != first.source_sha256
    assert file_sha256(out / second.file) == file_sha256(mine) and not (out / first.file).exists()


def test_a_published_file_changed_on_disk_is_exported_again(published: dict) -> None:
    """Once the changed file is out of the way: it is not what the demo wrote, so it is never replaced
    unasked (nothing is lost: it may be the user's own export copied there)."""
    out = published["out"]
    manifest = json.loads((out / demo.MANIFEST).read_text())
    assert all(f["sha256"] for f in manifest["models"][0]["files"])  # each file records its bytes
    to_onnx(_tiny(5), out / "resnet10.fp16.onnx", exporter="legacy")  # replaced behind the demo's back
    with pytest.raises(demo.DemoError, match="resnet10.fp16.onnx is not a file the demo wrote"):
        demo.prepare_models(out, ["resnet10"])
    assert published["exports"] == ["resnet10", "resnet10"]  # the refused try (refused before its export ran)
    (out / "resnet10.fp16.onnx").unlink()
    demo.prepare_models(out, ["resnet10"])
    assert published["exports"] == ["resnet10"] * 3 and (out / "resnet10.fp16.onnx").is_file()


def test_a_names_env_dir_weights_are_shown_with_their_own_labels_read_from_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: `aperture demo resnet10` with a 2-class run in $APERTURE_WEIGHTS_DIR exported it but told the
    page the registry's ten CIFAR-10 labels, so its cat output was shown as "airplane". models.json's facts come
    from the exported file, as for --onnx files, also when an earlier models.json said otherwise."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    mine = _tiny(0, num_classes=2, class_names=("cat", "dog"))
    mine.temperature = 1.5
    save_weights(mine, tmp_path / "w" / "resnet10" / "model.safetensors")
    monkeypatch.setenv("APERTURE_WEIGHTS_DIR", str(tmp_path / "w"))
    real = demo.export_for_demo
    monkeypatch.setattr(demo, "export_for_demo", lambda m, out, sha=None, **kw: real(m, out, sha, validate=False,
                                                                                          exporter="legacy"))
    out = tmp_path / "models"
    (entry,) = (e for e in demo.prepare_models(out, ["resnet10"]) if e.available)
    assert entry.labels == ["cat", "dog"] and entry.input_size == [3, 32, 32]
    assert "NOT the published weights" in entry.weights_note and {f.temperature for f in entry.files} == {1.5}
    doc = json.loads((out / demo.MANIFEST).read_text())
    doc["models"][0].update(labels=["airplane", "automobile"], input_size=[3, 64, 64])  # an older run's facts
    doc["models"][0]["files"][0].update(temperature=None, calibrated=False, calibrator=None)
    (out / demo.MANIFEST).write_text(json.dumps(doc))
    monkeypatch.setattr(demo, "export_for_demo", None)  # reused: an export would fail
    (again,) = (e for e in demo.prepare_models(out, ["resnet10"]) if e.available)
    assert again.labels == ["cat", "dog"] and again.input_size == [3, 32, 32] and again.files[0].temperature == 1.5
    assert json.loads((out / demo.MANIFEST).read_text())["models"][0]["labels"] == ["cat", "dog"]


# ------------------------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    models = tmp_path_factory.mktemp("models")
    (models / "models.json").write_text('{"models": []}')
    (models / ".aperture.lock").write_text("")
    secret = tmp_path_factory.mktemp("outside") / "secret.txt"
    secret.write_text("not for the page")
    (models / "link.txt").symlink_to(secret)
    (models / "sub").mkdir()
    (models / "sub" / "up").symlink_to(secret.parent, target_is_directory=True)
    with DemoServer(WEB, models, port=0) as srv:
        yield srv


def _status(server: DemoServer, path: str, host: str | None = "127.0.0.1") -> int:
    port = server.httpd.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", path, skip_host=True)
    if host is not None:
        conn.putheader("Host", host.replace("PORT", str(port)))
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:PORT", "localhost:PORT", "LOCALHOST", "[::1]:PORT", "[::1]"])
def test_loopback_host_names_are_served(served: DemoServer, host: str) -> None:
    assert _status(served, "/models/models.json", host) == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:PORT", "127.0.0.1.evil.example", "localhost.:PORT",
                                  "0.0.0.0:PORT", "", None, "127.0.0.1:x"])
def test_any_other_host_is_refused_dns_rebinding(served: DemoServer, host: str | None) -> None:
    assert _status(served, "/models/models.json", host) == 421
    assert _status(served, "/", host) == 421


@pytest.mark.parametrize("path", ["/models/link.txt", "/models/sub/up/secret.txt", "/models/", "/models/sub/",
                                  "/gallery/", "/models/.aperture.lock", "/node_modules/"])
def test_nothing_outside_the_roots_no_hidden_files_no_listings(served: DemoServer, path: str) -> None:
    assert _status(served, path) == 404


def test_host_rule() -> None:
    assert host_allowed("192.168.1.5:8000", "192.168.1.5") and not host_allowed("192.168.1.5:8000")
    assert not host_allowed("anything", "0.0.0.0")  # listening everywhere names no one host
