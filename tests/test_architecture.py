"""The module graph stays a DAG, and the layers import one way (see ARCHITECTURE.md).

Every import counts, also the ones inside functions (they hide cycles from Python but not from a
reader). Package ``__init__`` files are skipped: they only re-export lazily.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"aperture_zoo": ROOT / "aperture_zoo", "aperture_zoo.train": ROOT / "train",
            "aperture_zoo.export": ROOT / "export"}
# Lower layers never import higher ones.
LAYERS = [
    {"registry", "errors", "files", "_lazy", "progress"},
    {"model", "weights", "images", "data", "hub"},
    {"catalog", "pretrained", "transforms", "summary"},
    {"cards", "publish", "samples"},
    {"train", "export"},
    {"demo", "browser", "cli", "__main__"},
]


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            parts = [p for p in f.relative_to(folder).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = f
    return mods


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, f in mods.items():
        if f.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                if node.level:
                    base = name.split(".")[: -node.level]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in found if t in mods and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                found.append(stack[stack.index(w):] + [w])
            elif w not in state:
                visit(w)
        stack.pop()
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v)
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    key = "__main__" if parts[-1] == "__main__" else parts[1]  # entry points sit on top
    return next(i for i, names in enumerate(LAYERS) if key in names)


def test_the_import_graph_has_no_cycle() -> None:
    assert _cycles(import_graph()) == []


def test_layers_import_one_way() -> None:
    wrong = [(a, b) for a, targets in import_graph().items() for b in targets
             if a.count(".") and b.count(".") and _layer(a) < _layer(b)]
    assert wrong == []


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
