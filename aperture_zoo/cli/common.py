"""Shared CLI plumbing: expected errors become one clear line and exit code 2.

Text that comes from outside (file names, labels read from files, error messages quoting them)
goes through the one gate, ``aperture_zoo.terminal``: both consoles are gated (a control or bidi
character is shown, never sent to the terminal), and outside text in a markup string goes through
:func:`safe` (``terminal.markup``): a file named ``[b]x.png`` prints as itself.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from aperture_zoo.errors import ApertureError, os_error
from aperture_zoo.terminal import console as gated_console
from aperture_zoo.terminal import fragment
from aperture_zoo.terminal import markup


def safe(text: object) -> str:
    """Outside text (a path the user typed, a class name, a message quoting them) for one line of
    markup: shown as written, never styled, and a line break in it shown as ``\\n`` so it cannot
    start a forged line of output."""
    return markup(fragment(text))

console = gated_console()
err_console = gated_console(stderr=True)


def say_error(message: object, prefix: str = "[bold red]error:[/]") -> None:
    """One error line on stderr: wrapped at the width of a terminal, one physical line in a log.

    Line breaks are shown as ``\\n``: an error is one line, and the outside text it quotes (class, file
    or tensor names) must not start a forged line of its own."""
    from rich.markup import escape

    import sys

    # a real terminal only: FORCE_COLOR (set by CI systems) makes rich take a log for an 80-column terminal
    wrap = err_console.is_terminal and sys.stderr.isatty()
    err_console.print(f"{prefix} {escape(fragment(message))}", highlight=False, soft_wrap=not wrap, markup=True)


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


MODEL_HELP = ("Model: a name (resnet22), a published tag (resnet22.fast) or weights of your own: a model.safetensors "
              "path, local-dir:DIR or hf-hub:ORG/NAME[@rev] (the file's own classes, mean/std and temperature).")
WEIGHTS_HELP = "Weights for the named model: a model.safetensors path, local-dir:DIR or hf-hub:ORG/NAME[@rev]."


def names_weights(name: str) -> bool:
    """Whether the model argument names weights by itself (a tag or a source) rather than an architecture."""
    from aperture_zoo.pretrained import is_source

    return is_source(name) or "." in name


def weights_choice(name: str, weights: str | None, pretrained: bool, random_init: bool | None = None) -> str | None:
    """The one reading of a command's model arguments: the weights source to open (None: random init).

    ``NAME`` is a registry name with exactly one of --weights SRC, --pretrained or --random-init, or a
    tag / source that names its weights itself (with --pretrained at most, which it implies).
    ``random_init`` None: the command offers no --random-init.
    """
    from aperture_zoo.weights import WeightsError

    if names_weights(name):
        if weights is not None or random_init:
            raise WeightsError(f"{name!r} names its weights itself; drop {'--weights' if weights else '--random-init'} "
                               "(or name an architecture, e.g. resnet22, with --weights SRC)")
        return name
    if sum([weights is not None, pretrained, bool(random_init)]) != 1:
        raise WeightsError(
            "say which weights to use, exactly one of --weights SRC (a model.safetensors, local-dir:DIR or "
            "hf-hub:ORG/NAME), --pretrained (the published ones)" + (
                " or --random-init (untrained, for benchmarks and tests)" if random_init is not None else "")
            + "; or pass your weights as the model itself (e.g. runs/x/model.safetensors instead of the name)"
        )
    return None if random_init else (weights if weights is not None else name)


def open_for_command(name: str, weights: str | None = None, pretrained: bool = False) -> Any:
    """The weights file a command works on, read once through ``load()``'s path (a ``pretrained.Loaded``)."""
    from aperture_zoo.pretrained import fetch_weights
    from aperture_zoo.weights import WeightsError, spec_from_metadata

    weights_choice(name, weights, pretrained)
    if weights is None:  # the published weights of a name, or a tag / source given as the model
        return say_unpublished(fetch_weights(name))
    loaded = fetch_weights(name, weights)
    arch, spec = loaded.source.arch, spec_from_metadata(loaded.metadata)
    if spec is not None and spec.name != arch:
        raise WeightsError(
            f"{str(weights)!r} holds weights for {spec.name}, not {arch}; name that model instead "
            f"(e.g. `aperture eval {spec.name} --weights {weights}`), or pass the file alone as the model"
        )
    return loaded


def say_unpublished(loaded: Any) -> Any:
    """``loaded``, after one ``note:`` line on stderr when $APERTURE_WEIGHTS_DIR's file answered the name
    (``pretrained.unpublished_note``): whatever the command prints or writes is not the published weights'."""
    from aperture_zoo.pretrained import unpublished_note

    note = unpublished_note(loaded)
    if note is not None:
        err_console.print(f"note: {safe(note)}", highlight=False, soft_wrap=True)
    return loaded


def model_for_command(
    name: str, weights: str | os.PathLike[str] | None = None, pretrained: bool = False,
    random_init: bool | None = None,
) -> tuple[Any, Path | None, str | None]:
    """The eval-mode model a command works on, its weights file and that file's SHA-256 (None: random).

    Every command that takes a model reads it here (``weights_choice``), and builds it by ``load()``'s one
    rule (``pretrained.model_from``): the file's own architecture, head, class names, mean/std and
    temperature, wherever it comes from.
    """
    import torch

    from aperture_zoo.catalog import find_weights
    from aperture_zoo.model import create_model
    from aperture_zoo.pretrained import model_from

    weights = None if weights is None else str(weights)
    if weights_choice(name, weights, pretrained, random_init) is None:
        record = find_weights(name)
        torch.manual_seed(0)
        return create_model(record.arch if record else name).eval(), None, None
    loaded = open_for_command(name, weights, pretrained)
    return model_from(loaded), loaded.path, loaded.sha256


def weights_file_for_command(name: str, weights: str | None) -> tuple[str, Path | None]:
    """(architecture, local weights file) for commands that copy or describe a file (card, push).

    ``--weights`` (or a source given as the name) is resolved to a file on this disk, an ``hf-hub:``
    one through the Hub cache, its pin checked; None: the command's own default.
    """
    from aperture_zoo.pretrained import file_spec

    if weights is None and not names_weights(name):
        return name, None
    loaded = open_for_command(name, weights)
    return file_spec(loaded).name, loaded.path
