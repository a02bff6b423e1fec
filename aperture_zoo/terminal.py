"""The one gate between outside text and a terminal.

Class names, file names, weights metadata and messages quoting them come from anyone (a folder, a
Hub repo). Printed raw, an escape sequence in a class name recolours or clears the terminal, ``\\r``
overwrites the line before it, a bidi override reverses what follows, and ``[red]`` or ``[/]`` is
read as rich markup (restyled, or a crash). So:

- every console the product prints through is a ``GatedConsole``: every string it is given, and
  every piece of text it renders, has its control and bidi characters shown as escapes (``\\x1b``,
  ``\\u202e``); rich's own styling is added after this, so colours still work (our own code, as rich
  drops BEL and ``\\r`` silently but passes ESC and bidi overrides through);
- outside text put into a markup string goes through ``markup()`` (brackets escaped), and text
  printed without rich through ``shown()``; rich's emoji codes (``:smile:``) are off in every console;
- a fragment of outside text (a class or file name, a metadata string) put into a message goes
  through ``fragment()`` first: ``shown()`` keeps newlines (a whole message may have lines of its
  own), so a name holding ``\n`` would start a forged line of output.

Kept apart from the CLI so the library's own progress lines and the training log use it too.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

# C0/C1 controls but newline (tab too: it moves the cursor), DEL, and the invisible format characters
# that reorder or hide text (bidi embeddings, overrides and isolates, the marks, zero-width joiners, the BOM).
_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb]")


def _visible(match: re.Match[str]) -> str:
    return repr(match.group(0))[1:-1]  # as Python writes it: \x1b, \r, \t, \u202e


def shown(text: object) -> str:
    """``text`` with every control or bidi character shown as an escape (``\\x1b``): safe to print raw."""
    s = str(text)
    s = _UNSAFE.sub(_visible, s)
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in s if c != "\n"):  # the rest of Unicode's
        s = "".join(c if c == "\n" or unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp")
                    else f"\\u{ord(c):04x}" for c in s)
    return s


def fragment(text: object) -> str:
    """One piece of outside text for a message: ``shown``, its line breaks too, so it never starts a line."""
    return shown(str(text).replace("\n", "\\n"))


def markup(text: object) -> str:
    """``text`` for a rich markup string: shown as written (``[b]x.png`` stays ``[b]x.png``), never styled."""
    from rich.markup import escape

    return escape(shown(text))


def say(message: object) -> None:
    """One line on stderr for code that prints without rich (the training log's dataset lines)."""
    print(shown(message), file=sys.stderr, flush=True)


def gate_warnings() -> None:
    """Python warnings go to stderr through the gate too (a library's warning may quote a class name)."""
    import warnings

    if getattr(warnings.showwarning, "_gated", False):
        return
    original = warnings.showwarning

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if file is not None and file is not sys.stderr:
            return original(message, category, filename, lineno, file, line)
        sys.stderr.write(shown(warnings.formatwarning(message, category, filename, lineno, line)))

    show._gated = True  # type: ignore[attr-defined]
    warnings.showwarning = show


@lru_cache(maxsize=None)
def _console_class() -> type:
    from rich.console import Console
    from rich.segment import Segment

    class GatedConsole(Console):
        """A rich Console whose rendered text never holds a control or bidi character (see the module)."""

        def render_str(self, text: str, *args: Any, **kwargs: Any) -> Any:
            # before rich reads markup and silently drops \r and BEL: shown, like every other control character
            return super().render_str(shown(text), *args, **kwargs)

        def render(self, renderable: Any, options: Any = None) -> Iterable[Segment]:
            for segment in super().render(renderable, options):
                if segment.control or not segment.text or (_UNSAFE.search(segment.text) is None
                                                           and segment.text.isprintable()):
                    yield segment
                else:
                    lines = segment.text.split("\n")  # newlines are rich's own line breaks
                    yield Segment("\n".join(shown(line) for line in lines), segment.style, segment.control)

    return GatedConsole


def console(**kwargs: Any) -> Any:
    """A ``rich.console.Console`` (same arguments) behind the gate: the only way the product makes one.

    Emoji codes are off: rich would print a file named ``photo :thumbs_up:.png`` as ``photo 👍.png``,
    a name that cannot be copied back, and a class ``dog :smile:`` not as written."""
    kwargs.setdefault("emoji", False)
    return _console_class()(**kwargs)
