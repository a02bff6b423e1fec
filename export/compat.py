"""Which runtimes can load a file: the lowest IR version its opsets allow, only the opset domains it
uses, and the opsets an export may ask for.

An IR version stamp higher than the graph needs shuts older runtimes out for nothing (onnxruntime
1.16 refuses IR 10 but runs opset 18 graphs, which need only IR 8), and every declared domain is a
requirement too (``ai.onnx.ml`` 5 alone makes onnxruntime 1.16 refuse a file). The IR version each
opset needs is read from the installed onnx package's own release table, never typed by hand.
"""

from __future__ import annotations

import onnx

from .errors import ExportError

DEFAULT_DOMAINS = ("", "ai.onnx")
# The first opset the torch.export-based ONNX translator writes; the TorchScript one goes lower.
LOWEST_OPSET = {"dynamo": 18, "legacy": 9}
# Element types of the original IR (<= 4): a file using a newer type (float8: IR 9, int4: IR 10,
# ...) keeps the IR version the exporter gave it, as its opsets alone do not say what it needs.
_CLASSIC_TYPES = frozenset(range(1, 17))  # FLOAT .. BFLOAT16


def highest_opset() -> int:
    """The newest ``ai.onnx`` opset the installed onnx package knows."""
    return onnx.defs.onnx_opset_version()


def check_opset(opset: int, exporter: str) -> None:
    """An ``--opset`` the exporter cannot write, or that the installed onnx does not know, is refused
    before anything is exported."""
    lowest, highest = LOWEST_OPSET.get(exporter, LOWEST_OPSET["legacy"]), highest_opset()
    if opset < lowest:
        hint = " (or --exporter legacy for older opsets)" if exporter == "dynamo" else ""
        raise ExportError(f"--opset {opset} is out of range: the {exporter} exporter writes {lowest}..{highest}{hint}")
    if opset > highest:
        raise ExportError(f"--opset {opset} is out of range: onnx {onnx.__version__} knows opsets up to {highest}; "
                          f"use {lowest}..{highest}, or upgrade onnx")


def _min_ir_table() -> dict[str, list[tuple[int, int]]]:
    """Per domain, (opset, IR version of the first onnx release with that opset), from onnx's table."""
    table: dict[str, dict[int, int]] = {"": {}, "ai.onnx.ml": {}, "ai.onnx.training": {}}
    for row in onnx.helper.VERSION_TABLE:  # (release, IR, ai.onnx, ai.onnx.ml, ai.onnx.training)
        _, ir, *opsets = row
        for domain, version in zip(table, opsets):
            if version is not None:
                table[domain].setdefault(version, ir)
                table[domain][version] = min(table[domain][version], ir)
    return {d: sorted(v.items()) for d, v in table.items()}


def min_ir_for(domain: str, version: int) -> int | None:
    """The lowest IR version that carries ``version`` of ``domain``; None for an opset newer than
    the installed onnx knows, or a domain it does not version (a vendor's, e.g. ``com.microsoft``)."""
    rows = _min_ir_table().get("" if domain in DEFAULT_DOMAINS else domain) or []
    return next((ir for opset, ir in rows if opset >= version), None)  # None: newer than onnx knows


def used_domains(proto: onnx.ModelProto) -> set[str]:
    """Opset domains the nodes use, in the main graph, its subgraphs and local functions."""
    found: set[str] = set()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            found.add(node.domain or "")
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(sub)

    walk(proto.graph)
    for fn in proto.functions:
        found.add(fn.domain or "")
        found.update(n.domain or "" for n in fn.node)
    return {"" if d in DEFAULT_DOMAINS else d for d in found}


def _element_types(proto: onnx.ModelProto) -> set[int]:
    g = proto.graph
    types = {t.data_type for t in g.initializer}
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.HasField("tensor_type"):
            types.add(vi.type.tensor_type.elem_type)
    return types


def stamp_lowest_ir(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the opset imports no node uses and stamp the lowest IR version the rest allow (in place).

    The one place a file's compatibility is set: ``save_checked`` applies it to every file it
    writes, whatever the variant.
    """
    used = used_domains(proto)
    keep = [o for o in proto.opset_import if ("" if o.domain in DEFAULT_DOMAINS else o.domain) in used | {""}]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
    versioned = _min_ir_table()
    needs = [min_ir_for(o.domain, o.version) for o in keep
             if ("" if o.domain in DEFAULT_DOMAINS else o.domain) in versioned]
    if None in needs or not _element_types(proto) <= _CLASSIC_TYPES:
        return proto  # an opset newer than onnx's table, or a newer element type: keep the stamp
    lowest = max(needs, default=proto.ir_version)
    proto.ir_version = min(proto.ir_version, lowest) if proto.ir_version else lowest
    return proto
