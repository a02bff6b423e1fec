"""PEP 562 lazy exports, shared by ``aperture_zoo`` and ``aperture_zoo.export``.

Both packages re-export names whose modules import torch or onnxruntime; resolving them on first
use keeps ``aperture --help`` and torch-free ONNX inference light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, namespace: dict[str, Any], lazy: dict[str, str], public: list[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``lazy`` maps a name to its submodule."""

    def __getattr__(name: str) -> Any:
        if name in lazy:
            value = getattr(importlib.import_module(f".{lazy[name]}", package), name)
            namespace[name] = value  # cache: later lookups skip __getattr__
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(public)

    return __getattr__, __dir__
