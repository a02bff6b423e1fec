"""Answers that are not the Hub's API (a proxy's error page in ISO-8859-1, HTML where JSON belongs, JSON of
another shape) end every Hub command with one ``error:`` line naming the endpoint, never a traceback.

A tiny server stands in for the proxy; the real, unpatched client talks to it.
"""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants  # noqa: F401 - imported before HF_* are set, as in a long-lived process
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from profiles import examples

ROOT = Path(__file__).resolve().parent.parent
PROXY_PAGE = "<html><body>Zugriff verweigert f\u00fcr diese Seite</body></html>".encode("latin-1")  # 0xfc: not UTF-8


class _Answer(BaseHTTPRequestHandler):
    """Answers every request with the server's one set answer: (status, headers, body)."""

    answer: tuple[int, dict[str, str], bytes] = (403, {}, b"")

    def _reply(self) -> None:
        status, headers, body = self.server.answer  # type: ignore[attr-defined]
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = _reply

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def proxy():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[attr-defined]
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def through(proxy, monkeypatch, tmp_path):
    """This process talks to ``proxy`` as its Hub, with a Hub cache of its own (empty)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", proxy.url)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "APERTURE_WEIGHTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))

    def answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> str:
        proxy.answer = (status, {"Content-Type": "text/html; charset=iso-8859-1", **(headers or {})}, body)
        return proxy.url
    return answer


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from aperture_zoo.pretrained import MODEL_CARDS_DIR

    return Path(shutil.copyfile(MODEL_CARDS_DIR / "resnet10" / "model.safetensors",
                                tmp_path_factory.mktemp("run") / "model.safetensors"))


def _one_error_line(args: list[str]) -> str:
    from typer.testing import CliRunner

    from aperture_zoo.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == 2 and result.output.startswith("error: "), result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    return result.output


@pytest.mark.parametrize("status, body, headers", [
    (403, PROXY_PAGE, {}),  # the hostile report's proxy: a UnicodeDecodeError traceback from the client
    (404, b'{"error": "\x9b31m"}', {"Content-Type": "application/json", "X-Error-Code": "RepoNotFound"}),
    (200, b"<html>Willkommen im WLAN</html>", {"Content-Type": "text/html"}),  # a captive portal: HTML, not JSON
    (404, b"[1]", {"Content-Type": "application/json"}),  # JSON, but not the Hub's errors
], ids=["latin1-403", "hub-marks-bad-utf8", "portal-200-html", "json-list"])
def test_push_through_a_server_that_is_not_the_hub_is_one_line(through, weights, status, body, headers):
    url = through(status, body, headers)
    out = _one_error_line(["push", "resnet10", "--repo-id", "alice/x", "--weights", str(weights),
                           "--token", "tok-alice"])
    assert f"the server at {url} answered" in out and "not the Hub's API (a proxy" in out and "push to alice/x" in out
    if status != 200:
        assert f"HTTP {status}" in out


@pytest.mark.parametrize("status, body", [(403, PROXY_PAGE), (407, PROXY_PAGE), (200, PROXY_PAGE)])
def test_a_download_through_a_proxy_says_so(through, status, body):
    """It said "not in the Hub cache and the download failed; connect once", hiding the proxy's answer."""
    url = through(status, body)
    img = next((ROOT / "aperture_zoo" / "sample_images").glob("*cat*.png"))
    out = _one_error_line(["predict", str(img), "--model", "hf-hub:alice/x"])
    assert f"the server at {url} answered" in out and "not the Hub's API" in out and "alice/x" in out
    if status != 200:  # the proxy's own status, as the push's refusal gives it
        assert f"the server at {url} answered HTTP {status} with a page" in out, out


_headers = st.fixed_dictionaries({}, optional={
    "Content-Type": st.sampled_from(["application/json", "text/html; charset=iso-8859-1", "text/plain", ""]),
    "X-Error-Code": st.sampled_from(["RepoNotFound", "RevisionNotFound", "EntryNotFound", "GatedRepo", "Other"]),
    "X-Error-Message": st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
})
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                         st.sampled_from(["error", "errors", "error_description", "message", "x"]), inner, max_size=3),
                     max_leaves=6)


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(status=st.sampled_from([400, 401, 403, 404, 407, 409, 413, 429, 451]), headers=_headers,
       body=st.binary(max_size=80) | _json.map(lambda v: json.dumps(v, ensure_ascii=False).encode())
       | st.just(PROXY_PAGE))
@example(status=403, headers={}, body=PROXY_PAGE)
@example(status=404, headers={"Content-Type": "application/json"}, body=b'{"errors": [5]}')
def test_any_error_answer_is_a_hub_error(through, status, headers, body):
    """Whatever bytes answer an error, the client's exception comes back as one HubError line."""
    from huggingface_hub import HfApi

    from aperture_zoo.hub import HubError, _translate

    url = through(status, body, headers)
    with pytest.raises(HubError) as info, _translate("alice/x", "push to", url):
        HfApi(endpoint=url, token="tok-alice").repo_info("alice/x")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("body", [b"[]", b"null", b'"s"', b'{"x": 1}', b'{"id": "alice/x", "sha": 5, "siblings": 3}'])
def test_a_success_of_another_shape_is_one_line_for_push_and_download(through, weights, body):
    """A 200 JSON answer of another shape than the API's (a list for a repo's record, a record without its id) was a
    client AttributeError/KeyError/TypeError traceback on push, and on download for a list."""
    url = through(200, body, {"Content-Type": "application/json"})
    out = _one_error_line(["push", "resnet10", "--repo-id", "alice/x", "--weights", str(weights), "--token", "tok-a"])
    assert f"the server at {url} answered" in out and "push to alice/x" in out
    img = next((ROOT / "aperture_zoo" / "sample_images").glob("*cat*.png"))
    out = _one_error_line(["predict", str(img), "--model", "hf-hub:alice/x"])
    assert f"the server at {url} answered" in out and "download from alice/x" in out


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_json.map(lambda v: json.dumps(v, ensure_ascii=False).encode()))
@example(body=b"[]")
def test_any_success_of_another_shape_is_a_hub_error(through, body):
    """Whatever JSON a 200 answer holds where a repo's record belongs (never its id), one HubError line."""
    from huggingface_hub import HfApi

    from aperture_zoo.hub import HubError, _translate

    url = through(200, body, {"Content-Type": "application/json"})
    with pytest.raises(HubError) as info, _translate("alice/x", "push to", url):
        HfApi(endpoint=url, token="tok-alice").repo_info("alice/x")
    assert "\n" not in str(info.value)


def test_a_type_error_of_our_own_inside_the_translation_stays_a_bug(through):
    """Only the client's misreading of an answer becomes the one line; an error in this package's code is not hidden."""
    from aperture_zoo.hub import _translate

    with pytest.raises(TypeError), _translate("alice/x", "push to", through(200, b"{}")):
        len(5)  # type: ignore[arg-type]


def test_a_server_naming_a_commit_outside_the_cache_is_blamed_not_the_cache(through, tmp_path):
    """Seventh hostile try, L8: a server naming the commit '../../..' was refused, but the line said the user's cache
    was damaged and to delete it (it would happen again). Nothing is written outside the cache."""
    from huggingface_hub import constants

    url = through(200, b"", {"Content-Type": "application/octet-stream", "X-Repo-Commit": "../../../../../pwned",
                             "ETag": '"0123456789abcdef"', "X-Linked-Size": "0"})
    img = next((ROOT / "aperture_zoo" / "sample_images").glob("*cat*.png"))
    out = " ".join(_one_error_line(["predict", str(img), "--model", "hf-hub:alice/ftc"]).split())
    assert f"the server at {url} named the commit '../../../../../pwned' of alice/ftc, a path outside the Hub cache" in out
    assert "damaged" not in out and "check HF_ENDPOINT" in out
    assert not list(Path(constants.HF_HUB_CACHE).parent.rglob("pwned*"))


def test_a_cache_ref_outside_the_cache_is_still_called_a_damaged_cache(tmp_path):
    """The client's own refusal for both cases; only the cache's ref holding the commit makes it the cache's fault."""
    from huggingface_hub.file_download import _get_pointer_path

    from aperture_zoo.hub import HubError, _translate

    storage = tmp_path / "models--alice--ftc"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text("../../../evil")
    for commit, said in [("../../../evil", "the local Hub cache of alice/ftc is damaged (a ref points outside it)"),
                         ("../../../other", "the server at http://hub.test named the commit '../../../other'")]:
        with pytest.raises(HubError) as info, _translate("alice/ftc", "download from", "http://hub.test"):
            _get_pointer_path(str(storage), commit, "model.safetensors")
        assert str(info.value).startswith(said) and "\n" not in str(info.value)
