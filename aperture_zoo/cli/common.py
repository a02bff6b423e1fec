"""Shared CLI plumbing: expected errors become one clear line and exit code 2."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console

from aperture_zoo.errors import ApertureError

console = Console()
err_console = Console(stderr=True)


@contextmanager
def user_errors(hint: Callable[[ApertureError], str | None] | None = None) -> Iterator[None]:
    """Print an ApertureError's message (it names the problem and the fix) instead of a traceback.

    ``hint`` words what to type next for the errors it knows (a command line), appended to the message.
    """
    try:
        yield
    except ApertureError as exc:
        err_console.print(f"[bold red]error:[/] {with_hint(exc, hint)}", highlight=False, soft_wrap=True,
                          markup=True)
        raise typer.Exit(code=2) from None


def with_hint(exc: ApertureError, hint: Callable[[ApertureError], str | None] | None) -> str:
    """The error's message, followed by what ``hint`` says to type next (it brings its own punctuation)."""
    return f"{exc}{(hint(exc) if hint is not None else None) or ''}"


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
