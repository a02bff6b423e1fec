"""The module graph stays a DAG, and the layers import one way (see ARCHITECTURE.md).

Every import counts, also the ones inside functions (they hide cycles from Python but not from a
reader). Package ``__init__`` files are not read (they only re-export lazily), but an import of a
package root counts: ``from aperture_zoo import x`` below the top layer is an upward edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"aperture_zoo": ROOT / "aperture_zoo", "aperture_zoo.train": ROOT / "train",
            "aperture_zoo.export": ROOT / "export"}
# Lower layers never import higher ones.
LAYERS = [
    {"registry", "errors", "files", "filesets", "_lazy", "_version", "progress", "terminal"},
    {"model", "weights", "convert", "images", "data", "hub", "device", "calibration", "calibrators", "calibrator_fit",
     "corruptions", "labels", "folder", "folderscan", "manifest", "datareport",
     "datasets", "unseen", "provenance"},
    {"catalog", "sources", "pretrained", "transforms", "summary", "predict"},
    {"card_facts", "card_text", "card_calibration", "cards", "publish", "samples"},
    {"train", "export"},
    {"demo", "demo_server", "browser", "cli", "__main__", "__root__"},  # the package root re-exports from every layer
]
# The two layer-4 packages: neither may import the other (the CLI and the demo join them).
INDEPENDENT = ("aperture_zoo.train", "aperture_zoo.export")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            parts = [p for p in f.relative_to(folder).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = f
    return mods


def _edges(name: str, source: str, mods: set[str]) -> set[str]:
    """The project modules ``source`` (module ``name``) imports; ``from pkg import sub`` counts ``pkg.sub``."""
    edges: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            if node.level:
                base = name.split(".")[: -node.level]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{a.name}" for a in node.names} & mods
            edges |= subs if len(subs) == len(node.names) else subs | {target}  # any other name: the package
        elif isinstance(node, ast.Import):
            edges |= {a.name for a in node.names}
    return {t for t in edges if t in mods and t != name}


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, f in mods.items():
        if f.name != "__init__.py":
            graph[name] = _edges(name, f.read_text(), set(mods))
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
    key = "__main__" if parts[-1] == "__main__" else "__root__" if len(parts) == 1 else parts[1]
    return next(i for i, names in enumerate(LAYERS) if key in names)


def test_the_import_graph_has_no_cycle() -> None:
    assert _cycles(import_graph()) == []


def test_layers_import_one_way() -> None:
    wrong = [(a, b) for a, targets in import_graph().items() for b in targets if _layer(a) < _layer(b)]
    assert wrong == []


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_train_and_export_never_import_each_other() -> None:
    a, b = INDEPENDENT
    wrong = [(src, dst) for src, targets in import_graph().items() for dst in targets
             if (_inside(src, a) and _inside(dst, b)) or (_inside(src, b) and _inside(dst, a))]
    assert wrong == []


def test_edges_to_the_package_root_are_seen() -> None:
    """``from aperture_zoo import __version__`` in a low layer is an upward edge; ``from . import hub`` is not."""
    mods = set(_modules())
    assert _edges("aperture_zoo.weights", "from . import __version__", mods) == {"aperture_zoo"}
    assert _edges("aperture_zoo.cards", "from aperture_zoo import __version__", mods) == {"aperture_zoo"}
    assert _layer("aperture_zoo") > _layer("aperture_zoo.weights")
    assert _edges("aperture_zoo.pretrained", "from . import hub", mods) == {"aperture_zoo.hub"}
    assert _edges("aperture_zoo.train.zoo", "from aperture_zoo.export.pipeline import export_run", mods) == {
        "aperture_zoo.export.pipeline"}


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_runtime_worker_imports_only_numpy_and_the_runtime() -> None:
    """It runs in venvs that hold nothing but numpy and one runtime (export/matrix.py)."""
    source = (ROOT / "export" / "runtime_worker.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            imported.add((node.module or "").split(".")[0])
    # ExecuTorch's runtime takes torch tensors: torch is part of that runtime, not of aperture_zoo
    runtimes = {"onnxruntime", "cv2", "openvino", "ai_edge_litert", "executorch", "torch"}
    assert imported - {"__future__"} <= {"argparse", "json", "sys", "importlib", "numpy", *runtimes}, imported
