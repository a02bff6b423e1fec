"""Every file the exporter writes goes through the full ONNX checker: a malformed graph is an error."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from aperture_zoo.export import ExportError
from aperture_zoo.export.onnx_export import save_checked


def _graph(nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 18)])


def test_a_well_formed_graph_is_saved(tmp_path: Path) -> None:
    ok = _graph([helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Neg", ["h"], ["y"])])
    assert save_checked(ok, tmp_path / "ok.onnx").is_file()


def test_nodes_out_of_topological_order_fail_the_check(tmp_path: Path) -> None:
    """The fp16 converter once appended its Casts last; onnxruntime loads that, the spec forbids it."""
    unordered = _graph([helper.make_node("Neg", ["h"], ["y"]), helper.make_node("Relu", ["x"], ["h"])])
    with pytest.raises(ExportError, match="fails the ONNX checker"):
        save_checked(unordered, tmp_path / "bad.onnx")
