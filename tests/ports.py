"""A local port where connections are refused, for tests of an unreachable server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def refusing_port() -> Iterator[int]:
    """A port bound and never listening, held while in use: a connection there is refused, and no server of a
    parallel test can take it meanwhile (as it could a port found free, closed, then used)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]
