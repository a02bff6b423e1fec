"""A local Hugging Face Hub for tests: the part of the HTTP API the real ``huggingface_hub`` client uses.

The Hub cannot be reached from CI, yet pushing and pulling must be tested through the real,
unpatched client. This server speaks what that client sends:
create repo, validate-yaml, preupload (always "regular", so no LFS/Xet), NDJSON commits, branches,
HEAD/GET resolve with ``X-Repo-Commit``/``ETag``/size and ``Range``, repo info, revision info, tree,
and errors as ``X-Error-Code`` headers. Auth is bearer tokens; a user may write to their own
namespace and to the organisations they belong to. A commit that changes nothing makes no commit.

Standard library only (plus PyYAML, a dependency of huggingface_hub, to validate card metadata).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.onnx filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's content: what the Hub reports as a regular file's oid."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, bytes]
    time: float = field(default_factory=time.time)


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        oid = self.branches.get(rev, rev)
        return self.commits.get(oid)

    def history(self, branch: str = "main") -> list[Commit]:
        """Commits reachable from ``branch``, newest first."""
        out, oid = [], self.branches.get(branch)
        while oid is not None:
            out.append(self.commits[oid])
            oid = self.commits[oid].parent
        return out


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class HubServer:
    """``with HubServer(tokens={"tok": "alice"}, orgs={"zoo": {"alice"}}) as hub: hub.url``."""

    def __init__(self, tokens: dict[str, str], orgs: dict[str, set[str]] | None = None):
        self.tokens = dict(tokens)
        self.orgs = {k: set(v) for k, v in (orgs or {}).items()}
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (method, path), for tests that count traffic
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._counter = 0

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state ----------------------------------------------------------------------------------
    def can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, set()))

    def new_commit(self, repo: Repo, parent: str | None, message: str, files: dict[str, bytes]) -> Commit:
        self._counter += 1
        digest = hashlib.sha1(
            json.dumps([parent, message, self._counter, sorted((p, git_blob_sha1(d)) for p, d in files.items())])
            .encode()
        ).hexdigest()
        commit = Commit(digest, parent, message, files)
        repo.commits[digest] = commit
        return commit

    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        repo = Repo(repo_id, private)
        commit = self.new_commit(repo, None, "initial commit", {".gitattributes": GITATTRIBUTES})
        repo.branches["main"] = commit.oid
        self.repos[repo_id] = repo
        return repo


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    server_version = "LocalHub/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    # -- plumbing -------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        self.query = parse_qs(parts.query)
        # Split before unquoting: a revision may arrive as "refs%2Fpr%2F1".
        segs = [unquote(s) for s in parts.path.split("/") if s]
        self.hub.requests.append((method, parts.path))
        try:
            with self.hub.lock:
                self._route(method, segs)
        except HttpError as err:
            body = json.dumps({"error": err.message}).encode()
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send(err.status, body, "application/json", headers)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json_body(self) -> Any:
        try:
            return json.loads(self._body() or b"{}")
        except json.JSONDecodeError:
            raise HttpError(400, "request body is not JSON") from None

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None,
              length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        if token not in self.hub.tokens:
            raise HttpError(401, "Invalid credentials in Authorization header")
        return self.hub.tokens[token]

    def _repo(self, repo_id: str, write: bool = False) -> Repo:
        user = self._user()
        repo = self.hub.repos.get(repo_id)
        ns = repo_id.split("/")[0]
        if repo is None or (repo.private and not self.hub.can_write(user, ns)):
            raise HttpError(404, f"Repository {repo_id} not found", "RepoNotFound")
        if write:
            if user is None:
                raise HttpError(401, "You must be authenticated to write to a repository")
            if not self.hub.can_write(user, ns):
                raise HttpError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _commit(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    # -- routes ---------------------------------------------------------------------------------
    def _route(self, method: str, segs: list[str]) -> None:
        if segs == ["api", "agent-harnesses"]:
            return self._json({})
        if segs == ["api", "whoami-v2"] and method == "GET":
            user = self._user()
            if user is None:
                raise HttpError(401, "You must be authenticated")
            orgs = [{"name": o} for o, members in sorted(self.hub.orgs.items()) if user in members]
            return self._json({"type": "user", "name": user, "orgs": orgs})
        if segs == ["api", "repos", "create"] and method == "POST":
            return self._create_repo()
        if segs == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml()
        if len(segs) >= 4 and segs[:2] == ["api", "models"]:
            repo_id, rest = "/".join(segs[2:4]), segs[4:]
            if method == "GET" and not rest:
                return self._info(self._repo(repo_id), "main")
            if method == "GET" and rest[0] == "revision" and len(rest) == 2:
                return self._info(self._repo(repo_id), rest[1])
            if method == "GET" and rest[0] == "tree" and len(rest) >= 2:
                return self._tree(self._repo(repo_id), rest[1], "/".join(rest[2:]))
            if method == "POST" and rest[0] == "preupload" and len(rest) == 2:
                return self._preupload(self._repo(repo_id, write=True), rest[1])
            if method == "POST" and rest[0] == "commit" and len(rest) == 2:
                return self._commit_ndjson(self._repo(repo_id, write=True), rest[1])
            if method == "POST" and rest[0] == "branch" and len(rest) == 2:
                return self._branch(self._repo(repo_id, write=True), rest[1])
        if len(segs) >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve("/".join(segs[:2]), segs[3], "/".join(segs[4:]))
        raise HttpError(404, f"no route for {method} {self.path}")

    def _create_repo(self) -> None:
        body = self._json_body()
        user = self._user()
        if user is None:
            raise HttpError(401, "You must be authenticated to create a repository")
        ns = body.get("organization") or user
        repo_id = f"{ns}/{body['name']}"
        url = f"{self.hub.url}/{repo_id}"
        if not self.hub.can_write(user, ns):
            raise HttpError(403, f"You don't have the rights to create a model under the namespace {ns!r}")
        if repo_id in self.hub.repos:
            return self._json({"error": "You already created this model repo", "url": url}, 409)
        private = bool(body.get("private")) or body.get("visibility") == "private"
        self.hub.create_repo(repo_id, private)
        return self._json({"url": url, "name": repo_id})

    def _validate_yaml(self) -> None:
        import yaml

        content = self._json_body().get("content", "")
        if content.startswith("---"):
            front = content.split("---", 2)[1] if content.count("---") >= 2 else ""
            try:
                meta = yaml.safe_load(front)
            except yaml.YAMLError as exc:
                return self._json({"errors": [{"message": f"invalid YAML metadata: {exc}"}]}, 400)
            if not isinstance(meta, dict):
                return self._json({"errors": [{"message": "YAML metadata must be a mapping"}]}, 400)
        return self._json({})

    def _info(self, repo: Repo, rev: str) -> None:
        commit = self._commit(repo, rev)
        self._json({
            "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0],
            "sha": commit.oid, "private": repo.private, "gated": False, "disabled": False,
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.time)),
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            "tags": [], "downloads": 0, "likes": 0,
        })

    def _tree(self, repo: Repo, rev: str, path: str) -> None:
        commit = self._commit(repo, rev)
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        entries: dict[str, dict] = {}
        for fpath, data in sorted(commit.files.items()):
            if not fpath.startswith(prefix):
                continue
            parts = fpath[len(prefix):].split("/")
            dirs = parts[:-1] if recursive else parts[:-1][:1]
            for i in range(len(dirs)):
                d = prefix + "/".join(dirs[: i + 1])
                entries.setdefault(d, {"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()})
            if recursive or len(parts) == 1:
                entries[fpath] = {"type": "file", "path": fpath, "size": len(data), "oid": git_blob_sha1(data)}
        if prefix and not entries:
            raise HttpError(404, f"{path} does not exist at {rev}", "EntryNotFound",
                            {"X-Repo-Commit": commit.oid})
        self._json(list(entries.values()))

    def _preupload(self, repo: Repo, rev: str) -> None:
        commit = repo.resolve(rev)
        files = []
        for f in self._json_body().get("files", []):
            data = commit.files.get(f["path"]) if commit else None
            files.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                          "oid": git_blob_sha1(data) if data is not None else None})
        self._json({"files": files})

    def _commit_ndjson(self, repo: Repo, rev: str) -> None:
        if "ndjson" not in (self.headers.get("Content-Type") or ""):
            raise HttpError(400, "commit body must be application/x-ndjson")
        head = self._commit(repo, rev)
        if rev not in repo.branches:
            raise HttpError(400, f"{rev} is not a branch; commits go to branches", "RevisionNotFound")
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HttpError(400, "the first NDJSON line must be the commit header")
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        if parent and parent != head.oid:
            raise HttpError(412, f"parent commit {parent} is not the head of {rev}")
        files = dict(head.files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HttpError(400, "inline file content must be base64")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HttpError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound",
                                    {"X-Repo-Commit": head.oid})
            elif key == "deletedFolder":
                files = {p: d for p, d in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:
                raise HttpError(400, f"unsupported commit operation {key!r} (this server only takes regular files)")
        if files == head.files:
            oid = head.oid  # nothing changed: no empty commit
        else:
            message = header.get("summary", "") + ("\n\n" + header["description"] if header.get("description") else "")
            oid = self.hub.new_commit(repo, head.oid, message, files).oid
            repo.branches[rev] = oid
        self._json({"success": True, "commitOid": oid, "commitUrl": f"{self.hub.url}/{repo.repo_id}/commit/{oid}"})

    def _branch(self, repo: Repo, branch: str) -> None:
        start = self._json_body().get("startingPoint") or "main"
        if branch in repo.branches:
            raise HttpError(409, f"Reference {branch} already exists")
        repo.branches[branch] = self._commit(repo, start).oid
        self._json({})

    def _resolve(self, repo_id: str, rev: str, path: str) -> None:
        commit = self._commit(self._repo(repo_id), rev)
        data = commit.files.get(path)
        if data is None:
            raise HttpError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_sha1(data)}"', "Accept-Ranges": "bytes"}
        status, body = 200, data
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start_s, _, end_s = rng[len("bytes="):].partition("-")
            start = int(start_s or 0)
            end = min(int(end_s), len(data) - 1) if end_s else len(data) - 1
            if start >= len(data):
                raise HttpError(416, "range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            status, body = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(status, body, "application/octet-stream", headers)
