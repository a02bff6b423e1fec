"""Shared CLI plumbing: expected errors become one clear line and exit code 2.

Text that comes from outside (file names, labels read from files, error messages quoting them)
is printed through :func:`safe`, never interpreted: a file named ``[b]x.png`` prints as itself and
an escape sequence in a name is shown, not sent to the terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from aperture_zoo.errors import ApertureError, os_error

console = Console()
err_console = Console(stderr=True)


def safe(text: object) -> str:
    """``text`` for rich markup: brackets escaped, control characters made visible (``\\x1b``)."""
    from rich.markup import escape

    shown = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))
    return escape(shown)


def say_error(message: object, prefix: str = "[bold red]error:[/]") -> None:
    """One error line on stderr: wrapped at the width of a terminal, one physical line in a log."""
    wrap = err_console.is_terminal
    err_console.print(f"{prefix} {safe(message)}", highlight=False, soft_wrap=not wrap, markup=True)


@contextmanager
def user_errors(hint: Callable[[ApertureError], str | None] | None = None) -> Iterator[None]:
    """Print an expected failure (it names the problem and the fix) as one line and exit 2.

    ApertureErrors, and OS refusals (full or read-only disk, permissions, a file where a folder is
    needed), which become one line naming the path through :func:`aperture_zoo.errors.os_error`.
    ``hint`` words what to type next for the errors it knows (a command line), appended to the message.
    """
    try:
        yield
    except ApertureError as exc:
        say_error(with_hint(exc, hint))
        raise typer.Exit(code=2) from None
    except OSError as exc:
        say_error(os_error(exc))
        raise typer.Exit(code=2) from None


def with_hint(exc: ApertureError, hint: Callable[[ApertureError], str | None] | None) -> str:
    """The error's message, followed by what ``hint`` says to type next (it brings its own punctuation)."""
    return f"{exc}{(hint(exc) if hint is not None else None) or ''}"


def print_whole(table: Any) -> None:
    """A table at its natural width even on a narrower terminal (its lines wrap; no cell is cut)."""
    natural = console.measure(table, options=console.options.update_width(1000)).maximum
    width = console.width
    if natural > width:
        console.width = natural
    try:
        console.print(table, crop=False)
    finally:
        console.width = width


def print_json(data: Any) -> None:
    """JSON on stdout; a non-finite number is written as null, never as the invalid ``NaN``."""
    sys.stdout.write(json.dumps(_finite(data), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n")


def _finite(data: Any) -> Any:
    import math

    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def model_for_command(
    name: str, weights: Path | None = None, pretrained: bool = False, random_init: bool = False
) -> tuple[Any, Path | None, str | None]:
    """The eval-mode model a command works on, its weights file and that file's SHA-256 (None: random).

    Exactly one source: a file (whose own metadata names a derived architecture, if it was trained
    as one), the published weights, or a seeded random init (benchmarks and tests). The file is
    read once, through the same path as ``load()``.
    """
    import torch

    from aperture_zoo.catalog import find_weights
    from aperture_zoo.model import create_model
    from aperture_zoo.pretrained import fetch_weights, with_record_calibration
    from aperture_zoo.weights import WeightsError, apply_state_dict, spec_from_metadata

    if sum([weights is not None, pretrained, random_init]) != 1:
        raise WeightsError(
            "say which weights to use: --weights PATH (a model.safetensors), --pretrained (the "
            "published ones), or --random-init (untrained, for benchmarks and tests) — exactly one"
        )
    if random_init:
        record = find_weights(name)
        torch.manual_seed(0)
        return create_model(record.arch if record else name).eval(), None, None
    loaded = fetch_weights(name, weights)
    arch, spec = loaded.source.arch, spec_from_metadata(loaded.metadata)
    if weights is not None and spec is not None and spec.name != arch:
        raise WeightsError(
            f"{str(weights)!r} holds weights for {spec.name}, not {arch}; name that model instead "
            f"(e.g. `aperture eval {spec.name} --weights {weights}`)"
        )
    model = create_model(spec if weights is not None and spec is not None else arch)
    with_record_calibration(apply_state_dict(model, loaded.tensors, loaded.metadata, where=loaded.path), loaded)
    return model.eval(), loaded.path, loaded.sha256
