"""The browser demo's static server (``aperture demo``): the page folder and the models folder, nothing else.

It serves files only: nothing outside its two roots (every path is resolved, symlinks included, and
checked to lie inside), no hidden files, no folder listings, and only to requests whose Host header
names this machine by a loopback name (``localhost``, ``127.0.0.1``, ``[::1]``, any port) or the
address it listens on: a page on another site that rebinds its DNS name to 127.0.0.1 gets 421, not
the files. The cross-origin isolation headers let onnxruntime-web use its threaded WebAssembly build.
"""

from __future__ import annotations

import errno
import functools
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .errors import ApertureError
from .files import file_sha256

ORT_DIST = Path("node_modules") / "onnxruntime-web" / "dist"
ORT_CHECKSUMS = "ort-dist.sha256"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})


class DemoError(ApertureError, RuntimeError):
    """The demo cannot be prepared or served as asked (missing page, runtime, weights, port)."""


def web_dir() -> Path:
    """``apps/web`` of the source checkout this package runs from (the page is not in the wheel)."""
    path = Path(__file__).resolve().parent.parent / "apps" / "web"
    if not (path / "index.html").is_file():
        raise DemoError(
            f"the web demo is not at {path}: it ships with the source repository, not the wheel; "
            "run `aperture demo` from a clone (pip install -e .) or pass --web-dir"
        )
    return path


def check_web_runtime(web: Path) -> Path:
    """The onnxruntime-web ``dist`` folder the page loads, checked against the pinned SHA-256s.

    ``npm ci`` already verifies the package tarball against package-lock.json; this checks the
    files actually served, so a hand-edited or partly installed node_modules is caught too.
    """
    dist = web / ORT_DIST
    fix = f"run `npm ci --prefix {web}` (or `make demo`)"
    sums = web / ORT_CHECKSUMS
    if not dist.is_dir():
        raise DemoError(f"onnxruntime-web is not installed in {dist.parent}: {fix}")
    for line in sums.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        want, name = line.split(maxsplit=1)
        path = web / name.lstrip("*")
        if not path.is_file():
            raise DemoError(f"{path} is missing from the onnxruntime-web install: {fix}")
        got = file_sha256(path)
        if got != want:
            raise DemoError(
                f"{path} has SHA-256 {got}, not the pinned {want}: the installed onnxruntime-web "
                f"is not the version in package-lock.json; {fix}"
            )
    return dist



def host_allowed(header: str | None, bound: str = "127.0.0.1") -> bool:
    """A Host header naming this machine: a loopback name or the address served on, with or without a port."""
    if not header:
        return False
    host = header.strip().lower()
    if host.startswith("["):  # [::1]:8000
        name, _, rest = host.partition("]")
        name, port = name + "]", rest.removeprefix(":")
    else:
        name, _, port = host.partition(":")
    if port and not port.isdigit():
        return False
    own = f"[{bound.lower()}]" if ":" in bound else bound.lower()
    return name in LOOPBACK_NAMES or (name == own and bound not in ("0.0.0.0", "::"))


class _Handler(SimpleHTTPRequestHandler):
    """Static files with the headers the page needs; ``/models/`` comes from the models folder."""

    models_dir: Path | None = None
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream",
                      ".json": "application/json"}

    def _root_and_rest(self, path: str) -> tuple[str, str]:
        if self.models_dir is not None and (path == "/models" or path.startswith(("/models/", "/models?"))):
            return str(self.models_dir), path[len("/models"):] or "/"
        return self.directory, path

    def translate_path(self, path: str) -> str:
        """The file a URL names, with every symlink resolved; "" when that lies outside its root or is hidden."""
        root, rest = self._root_and_rest(path)
        saved, self.directory = self.directory, root
        try:
            found = super().translate_path(rest)
        finally:
            self.directory = saved
        real, top = os.path.realpath(found), os.path.realpath(root)
        inside = real == top or real.startswith(top.rstrip(os.sep) + os.sep)
        hidden = any(part.startswith(".") for part in Path(os.path.relpath(real, top)).parts) if inside else True
        return real if inside and not hidden else ""

    def send_head(self):  # type: ignore[no-untyped-def]
        """Every request gets an HTTP reply: a foreign Host 421; a path outside the roots, hidden or a
        folder without index.html 404; a path the OS cannot even look up 400 or 404."""
        if not host_allowed(self.headers.get("Host"), self.server.server_address[0]):
            self.send_error(421, "Misdirected request: this server answers to localhost only")
            return None
        try:
            path = self.translate_path(self.path)
            if not path or (os.path.isdir(path) and not os.path.isfile(os.path.join(path, "index.html"))):
                self.send_error(404, "File not found")
                return None
            return super().send_head()
        except ValueError:  # e.g. an encoded NUL byte (/%00): no file can have that name
            self.send_error(400, "Malformed path")
        except OSError:  # a path through a file (/index.html/x), too long a name, ...
            self.send_error(404, "File not found")
        return None

    def list_directory(self, path: str | os.PathLike[str]) -> None:  # type: ignore[override]
        self.send_error(404, "File not found")  # no folder listings
        return None

    def end_headers(self) -> None:
        # Cross-origin isolation lets onnxruntime-web use its multi-threaded WebAssembly build.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")  # a re-exported model is picked up on reload
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class _Server(ThreadingHTTPServer):
    """A client that goes away mid-download is normal for a browser: not a traceback on the console."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        from .terminal import say

        say(f"demo server: a request from {client_address[0]} failed: {type(exc).__name__}: {exc}")


def check_port(port: int) -> None:
    """A port number the OS can bind (checked before anything else runs)."""
    if not 0 <= port <= 65535:
        raise DemoError(f"--port must be in 0..65535 (0 picks a free one), got {port}")


class DemoServer:
    """The static server of the demo, on a background thread; use as a context manager."""

    def __init__(self, web: str | os.PathLike[str], models_dir: str | os.PathLike[str] | None = None,
                 host: str = "127.0.0.1", port: int = 8000) -> None:
        web = Path(web)
        handler = type("Handler", (_Handler,), {"models_dir": Path(models_dir) if models_dir else None})
        try:
            check_port(port)
            self.httpd = _Server((host, port), functools.partial(handler, directory=str(web)))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DemoError(f"port {port} on {host} is already in use (another `aperture demo`?); "
                                "pass --port N with a free port, or --port 0 to pick one") from None
            raise DemoError(f"cannot serve on {host}:{port} ({exc.strerror}); pass another --host or --port") from None
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/"

    def start(self) -> DemoServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="aperture-demo", daemon=True)
        self._thread.start()
        return self

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C raises KeyboardInterrupt here)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()

    def __enter__(self) -> DemoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_models_dir(web: Path) -> Path:
    """Where `aperture demo` keeps its exports: ``apps/web/models`` (git-ignored)."""
    return web / "models"
