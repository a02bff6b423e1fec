"""Shared CLI plumbing: expected errors become one clear line and exit code 2."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
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
    from aperture_zoo.pretrained import fetch_weights, with_record_temperature
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
    with_record_temperature(apply_state_dict(model, loaded.tensors, loaded.metadata, where=loaded.path), loaded)
    return model.eval(), loaded.path, loaded.sha256
