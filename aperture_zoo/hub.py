"""Fetching from the Hugging Face Hub through the ``huggingface_hub`` client (publishing is ``publish.py``).

The client does the protocol, caching and auth; this module verifies SHA-256 pins and turns the
client's exceptions into one-line errors that say what went wrong and how to fix it. Tokens are
passed through to the client and never printed.

The client reads ``HF_HOME``/``HF_HUB_CACHE`` when it is imported; ``HF_ENDPOINT`` and
``HF_HUB_OFFLINE`` are also read here at call time, so setting them in a running process works.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ApertureError
from .files import CONFIG_FILENAME, WEIGHTS_FILENAME
from .terminal import fragment


class HubError(ApertureError, RuntimeError):
    """The Hub refused or could not serve a request; the message names the fix."""


class HubUnavailableError(HubError):
    """The Hub has no such repo/file, or it cannot be reached and the cache has no copy."""


class HubIntegrityError(HubError):
    """A downloaded file does not match the SHA-256 digest the registry pins for it."""


# -- configuration read at call time -----------------------------------------------------------
def endpoint() -> str:
    """``HF_ENDPOINT`` now, else the client's configured endpoint."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` set now or when the client was imported."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def parse_hf_hub(ref: str) -> tuple[str, str | None]:
    """``hf-hub:ORG/NAME[@rev]`` (the prefix is optional) -> (repo_id, revision or None)."""
    body = ref.removeprefix("hf-hub:")
    repo_id, at, rev = body.partition("@")
    check_repo_id(repo_id)
    if at and not rev:
        raise HubError(f"{ref!r} names no revision after '@'; drop the '@' or name a branch, tag or commit")
    return repo_id, check_revision(rev) if rev else None


_REF_CHARS = re.compile(r"[A-Za-z0-9._/-]{1,255}")


def check_revision(revision: str) -> str:
    """A branch, tag or commit name as git allows it (``main``, ``v1.0``, ``refs/pr/1``, a commit id).

    The client caches ``refs/<revision>`` under the repo's cache folder without checking it (it has no
    validator of its own to call), so ``../../x`` would write outside the cache: refused here, like a
    bad repo id, before any request.
    """
    parts = revision.split("/") if isinstance(revision, str) else [""]
    if (not isinstance(revision, str) or not _REF_CHARS.fullmatch(revision) or ".." in revision
            or revision.startswith("-") or any(not p or p.startswith(".") or p.endswith(".lock") for p in parts)):
        raise HubError(f"invalid Hub revision {str(revision)[:80]!r}; use a branch, tag or commit name (letters, digits, "
                       "'.', '_', '-' and '/' between names, no '..'), e.g. hf-hub:ORG/NAME@main")
    return revision


def check_repo_id(repo_id: str) -> str:
    """The client's own repo-id rules, plus a namespace: a model repo here is always ORG/NAME."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        pass
    else:
        if "/" in repo_id:
            return repo_id
    raise HubError(f"invalid Hub repo id {repo_id!r}; use the form ORG/NAME, e.g. aperture-zoo/resnet22")


def resolve_token(token: str | None = None) -> str:
    """The flag's token, else ``HF_TOKEN``, else the client's stored login."""
    from huggingface_hub import get_token

    found = token or get_token()
    if not found:
        raise HubError(
            "no Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login` "
            "(the token needs write access to the repo)"
        )
    return found


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the endpoint opens; saves the client's ~25 s of retries offline."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


# -- error translation ---------------------------------------------------------------------------
def _transport_errors() -> tuple[type[BaseException], ...]:
    # Kept because the client re-raises its HTTP stack's own connection errors unwrapped on upload
    # and repo calls, and that stack (requests, then httpx) differs across supported client versions.
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for mod in ("httpx2", "httpx", "requests"):  # whichever HTTP stack this client version uses
        try:
            module = __import__(mod)
        except ImportError:
            continue
        for attr in ("TransportError", "ConnectionError", "Timeout"):
            candidate = getattr(module, attr, None)
            # httpx's ``Timeout`` is a config class, not an exception: keep exceptions only.
            if isinstance(candidate, type) and issubclass(candidate, BaseException):
                errors.append(candidate)
    return tuple(errors)


@contextmanager
def _translate(
    repo_id: str, action: str, url: str, revision: str | None = None, token_source: str = "",
    filename: str | None = None,
) -> Iterator[None]:
    """Map the client's exceptions to HubError subclasses with a fix in the message."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        yield
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise  # the caller knows whether it was offline; see download()
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        # The client parses every answer as UTF-8 JSON, error pages included (to quote them): a proxy's
        # page in another encoding, or HTML where JSON belongs, fails there, not in our code.
        raise not_hub_api(url, action, repo_id, _status_of(exc)) from None
    except HfHubHTTPError as exc:
        if _foreign(exc.response):
            raise not_hub_api(url, action, repo_id, exc.response.status_code) from None
        raise _http_error(exc, repo_id, action, url, revision, token_source, filename) from None
    except (AttributeError, KeyError, TypeError) as exc:  # the client's reading of an answer's JSON
        if _status_of(exc) is None and not _raised_in_client(exc):  # our own code's: a bug, shown as one
            raise
        raise not_hub_api(url, action, repo_id, _status_of(exc)) from None
    except ValueError as exc:  # huggingface_hub's refusal of a commit that would put a file outside the cache
        if "pointer path" not in str(exc):
            raise
        raise _outside_cache(str(exc), repo_id, url) from None
    except _transport_errors() as exc:
        raise HubUnavailableError(
            f"cannot reach the Hub at {url} to {action} {repo_id} ({type(exc).__name__}); check the "
            "network or HF_ENDPOINT"
        ) from None


def _outside_cache(message: str, repo_id: str, url: str) -> HubError:
    """Whose commit it was: a ref of the local cache (damaged), or the server's answer (nothing to delete).

    The client's refusal names the cache folder and the commit; the commit is the cache's own when one of
    its refs holds it, else the server named it. A message of another shape gets the line covering both."""
    folder = f"models--{repo_id.replace('/', '--')}"
    found = re.search(r"storage_folder='(.*?)'`, `revision='(.*)'` and `relative_filename=", message, re.DOTALL)
    if found is None:
        return HubError(f"a commit of {repo_id} would put files outside the Hub cache: the server at {url} named it, "
                        f"or the local cache is damaged; nothing was written outside; delete {folder} from the Hub "
                        "cache folder and try again, and if it happens again, check HF_ENDPOINT or your proxy")
    refs = Path(found.group(1)) / "refs"
    commit = found.group(2)
    if refs.is_dir() and any(p.is_file() and p.read_bytes().decode(errors="replace") == commit for p in refs.rglob("*")):
        return HubError(f"the local Hub cache of {repo_id} is damaged (a ref points outside it); delete "
                        f"{folder} from the Hub cache folder and download it again")
    return HubError(f"the server at {url} named the commit '{fragment(commit[:80])}' of {repo_id}, a path outside the "
                    "Hub cache, so nothing was downloaded or written; it is not the Hub's answer: check HF_ENDPOINT "
                    "or the proxy between you and the Hub")


def _http_error(exc: BaseException, repo_id: str, action: str, url: str, revision: str | None,
                token_source: str, filename: str | None = None) -> HubError:
    """The Hub's own refusal (it answered in its API) as one line with the fix."""
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, RevisionNotFoundError):
        return HubUnavailableError(f"{repo_id} has no revision {revision or 'main'!r} at {url}; check the branch or "
                                   "commit name (hf-hub:ORG/NAME@REVISION)")
    if isinstance(exc, RepositoryNotFoundError):
        return HubUnavailableError(f"Hub repo {repo_id} was not found at {url} (or it is private and the token cannot "
                                   "read it); check the repo id, or pass a token with access")
    if isinstance(exc, EntryNotFoundError):
        return HubUnavailableError(f"{repo_id}@{revision or 'main'} does not contain {filename or 'the requested file'} "
                                   f"({_first_line(exc)}); check the repo id and revision (hf-hub:ORG/NAME@REVISION), "
                                   "or pass weights=PATH / 'local-dir:DIR'")
    status = _status_of(exc)
    if status == 401:
        fix = ("pass a valid token with --token or HF_TOKEN" if action == "push to" else
               "set HF_TOKEN to a valid token, or unset it (public repos need none)")
        return HubError(f"the Hub at {url} rejected the token{token_source} (401) while trying to {action} "
                        f"{repo_id}; it is invalid or expired: {fix}, or run `hf auth login` "
                        "(new tokens: https://huggingface.co/settings/tokens)")
    if status == 403:
        return HubError(f"not allowed to {action} {repo_id} (403): the namespace {repo_id.split('/')[0]!r} belongs "
                        "to someone else or the token is read-only; push to your own namespace or use a token with "
                        "write access to it")
    return HubError(f"the Hub at {url} failed to {action} {repo_id}: {_first_line(exc)}")


def _foreign(response: object) -> bool:
    """An error answer with none of the Hub API's marks (an ``X-Error-Code``/``X-Error-Message`` header, a
    JSON body): a proxy's, firewall's or captive portal's page, whose status says nothing about the repo."""
    headers = getattr(response, "headers", None)
    if headers is None:
        return False
    return not (headers.get("X-Error-Code") or headers.get("X-Error-Message")
                or "json" in (headers.get("Content-Type") or "").lower())


def _foreign_cause(exc: BaseException) -> bool:
    """The client fell back to its cache because the answer was not the Hub's: an error page without the
    API's marks, or a success without the headers every Hub file answer carries (``FileMetadataError``)."""
    from huggingface_hub.errors import FileMetadataError, HfHubHTTPError

    cause = exc.__cause__
    return isinstance(cause, FileMetadataError) or (isinstance(cause, HfHubHTTPError) and _foreign(cause.response))


def _raised_in_client(exc: BaseException) -> bool:
    """Raised inside huggingface_hub itself: its reading of a 200 answer of another shape than the API's (a list
    where a repo's record belongs, a record without its id) fails there, not in our code."""
    import huggingface_hub

    client = Path(huggingface_hub.__file__).parent
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).is_relative_to(client)


def _status_of(exc: BaseException | None) -> int | None:
    """The HTTP status behind ``exc``: its own response's, or that of the error it was raised while handling."""
    seen = 0
    while exc is not None and seen < 8:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def not_hub_api(url: str, action: str, repo_id: str, status: int | None) -> HubUnavailableError:
    """The one line for an answer that did not come from the Hub's API (unavailable: a published copy may serve)."""
    answered = f"answered HTTP {status}" if status else "answered"
    return HubUnavailableError(
        f"the server at {url} {answered} with a page that is not the Hub's API (a proxy, firewall or captive portal "
        f"in between?) while trying to {action} {repo_id}; check HF_ENDPOINT and the proxy settings (HTTPS_PROXY, "
        "HTTP_PROXY), or ask whoever runs the network to let the Hub through")


def _token_source(explicit: object = None, flag: str = "token=") -> str:
    """Where the client took its token from (never the token itself), for 401 messages."""
    if isinstance(explicit, str):
        return f" (from {flag})"
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var):
            return f" (from {var})"
    return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- pull ----------------------------------------------------------------------------------------
def download(
    repo_id: str,
    filename: str = WEIGHTS_FILENAME,
    revision: str | None = None,
    *,
    sha256: str | None = None,
    token: str | bool | None = None,
    local_only: bool = False,
) -> Path:
    """A file of a Hub repo through the client's cache, checked against ``sha256`` when pinned."""
    fetched = fetch(repo_id, filename, revision, sha256=sha256, token=token, local_only=local_only)
    if fetched.pin is not None:
        from .files import file_sha256

        fetched.check(file_sha256(fetched.path))
    return fetched.path


@dataclass(frozen=True)
class Fetched:
    """A cached Hub file and the SHA-256 its bytes must have; the reader hashes it while reading."""

    path: Path
    repo_id: str
    revision: str
    pin: str | None
    pinned_by: str  # "the registry pins" or "its config.json records", for the refusal

    def check(self, actual: str) -> None:
        if self.pin is not None and actual != self.pin.lower():
            raise HubIntegrityError(
                f"{self.path.name} of {self.repo_id}@{self.revision} has SHA-256 {actual}, but "
                f"{self.pinned_by} {self.pin}; refusing to load it. Delete the cached copy ({self.path}) "
                "and download again; if it still differs the repo changed after pinning: pin its new "
                "digest in the registry"
            )


def fetch(
    repo_id: str,
    filename: str = WEIGHTS_FILENAME,
    revision: str | None = None,
    *,
    sha256: str | None = None,
    token: str | bool | None = None,
    local_only: bool = False,
) -> Fetched:
    """A file of a Hub repo through the client's cache and its pin, without reading it yet.

    ``local_only`` (and ``HF_HUB_OFFLINE``) never touch the network. An unreachable endpoint is
    detected up front and served from the cache like offline mode, instead of retrying for ~25 s.
    Unpinned weights take their pin from config.json of the same commit; with none they are refused.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    try:  # a malformed $APERTURE_HUB_ORG matters only here, to a command that fetches from the Hub
        check_repo_id(repo_id)
    except HubError as exc:
        org = os.environ.get("APERTURE_HUB_ORG")
        hint = f" (from APERTURE_HUB_ORG={org!r}: set it to an organisation name, or unset it)" if org else ""
        raise HubUnavailableError(f"{exc}{hint}") from None
    if revision is not None:
        check_revision(revision)
    url = endpoint()
    rev = revision or "main"
    why_local = (
        "local lookup only" if local_only
        else "HF_HUB_OFFLINE is set" if offline()
        else None if reachable(url)
        else f"the Hub at {url} cannot be reached"
    )
    try:
        with _translate(repo_id, "download from", url, revision, _token_source(token), filename):
            path = Path(hf_hub_download(
                repo_id, filename, revision=revision, endpoint=url, token=token,
                local_files_only=why_local is not None,
            ))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        from huggingface_hub import constants

        if why_local is None and _foreign_cause(exc):  # the client tried, got a proxy's page, then the cache
            raise not_hub_api(url, "download from", repo_id, _status_of(exc.__cause__)) from None
        fix = {
            "local lookup only": "load it once with pretrained=True (or `aperture eval NAME --pretrained`) to download it",
            "HF_HUB_OFFLINE is set": "unset HF_HUB_OFFLINE and connect once to cache it",
        }.get(why_local or "", f"connect to {url} once (or set HF_ENDPOINT to a reachable mirror) to cache it")
        raise HubUnavailableError(
            f"{filename} of Hub repo {repo_id}@{rev} is not in the Hub cache ({constants.HF_HUB_CACHE}) "
            f"and {why_local or 'the download failed'}; {fix}, or pass weights=PATH / 'local-dir:DIR'"
        ) from None
    if revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision.lower()) and path.parent.name != revision.lower():
        raise HubIntegrityError(  # the cache lays files out as snapshots/<commit>/<file>
            f"{repo_id}@{revision[:12]}... answered commit {path.parent.name[:12]}...: a branch or tag of the repo is "
            "named like that commit id and shadows it; ask the repo's owner to rename it, or load another revision")
    if sha256 is None and filename == WEIGHTS_FILENAME:
        pin = _config_pin(repo_id, path, token, local_only or why_local is not None)
        return Fetched(path, repo_id, rev, pin, "its config.json records")
    return Fetched(path, repo_id, rev, sha256, "the registry pins")


def _config_pin(repo_id: str, weights: Path, token: str | bool | None, local_only: bool) -> str:
    """The weights' SHA-256 as config.json *of the same commit* records it (what `aperture push` writes).

    An unpinned file is never used: with no record to check against, the download is refused.
    """
    from huggingface_hub import hf_hub_download

    commit = weights.parent.name  # the cache lays files out as snapshots/<commit>/<file>
    try:
        with _translate(repo_id, "download from", endpoint(), commit, _token_source(token)):
            path = Path(hf_hub_download(repo_id, CONFIG_FILENAME, revision=commit, endpoint=endpoint(),
                                        token=token, local_files_only=local_only))
        config = json.loads(path.read_text())  # the repo's file, not the server's answer: outside _translate
        pin = recorded_sha256(config)
        if pin is None:
            raise KeyError(f"no files.{WEIGHTS_FILENAME}.sha256")
        return pin
    except Exception as exc:  # noqa: BLE001 - missing file, offline without it cached, or no record in it
        raise HubIntegrityError(
            f"{WEIGHTS_FILENAME} of {repo_id}@{commit} has no SHA-256 to be checked against: the registry "
            f"pins none for this repo and its {CONFIG_FILENAME} gives none ({_first_line(exc)}). Refusing "
            "unverified weights: publish with `aperture push` (it records the digest), or pass weights=PATH"
        ) from None


def recorded_sha256(config: object) -> str | None:
    """The weights' SHA-256 a config.json records (``files.model.safetensors.sha256``, written by ``aperture
    push`` and ``aperture card``); None when it records none. The one pin of weights no registry pins, in a
    Hub repo and in a folder alike: a config.json describes only the bytes it was written for."""
    files = config.get("files") if isinstance(config, dict) else None
    entry = files.get(WEIGHTS_FILENAME) if isinstance(files, dict) else None
    sha = entry.get("sha256") if isinstance(entry, dict) else None
    return sha.lower() if isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha) else None
