"""What follows the logits stays float32 in every reduced-precision file.

The ``probabilities`` output is the weights' calibrator applied to the logits (``Calibrator.apply``
computed in the graph: one temperature or a calibrator of the logits' gaps, then Softmax). Quantised
or halved, it stops summing to 1 (int8 gave 0.992-0.996, which ``OnnxClassifier`` rightly refuses)
and stops being the calibrator's map of the file's own logits. So only
the backbone, up to the ``logits`` output, is converted; the tail is found from the graph (every
node downstream of ``logits``), not from a list of op types, so a node added after the logits later
stays float too.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .onnx_export import OUTPUT_NAME


def tail_nodes(model: onnx.ModelProto, start: str = OUTPUT_NAME) -> list[onnx.NodeProto]:
    """Every node downstream of the tensor ``start``, in graph order."""
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(model.graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    seen: set[int] = set()
    frontier = [start]
    while frontier:
        for i in consumers.get(frontier.pop(), []):
            if i not in seen:
                seen.add(i)
                frontier.extend(model.graph.node[i].output)
    outputs = {o.name for o in model.graph.output}
    for i, node in enumerate(model.graph.node):  # a constant only the tail reads (the temperature) is the tail's
        if not node.input and node.output and all(
                o not in outputs and consumers.get(o) and set(consumers[o]) <= seen for o in node.output):
            seen.add(i)
    return [n for i, n in enumerate(model.graph.node) if i in seen]


def split(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[onnx.NodeProto], list[onnx.TensorProto]]:
    """(the backbone as a model whose one output is ``logits``, the tail's nodes, the initializers only the tail uses)."""
    tail = tail_nodes(model)
    tail_ids = {id(n) for n in tail}
    body = [n for n in model.graph.node if id(n) not in tail_ids]
    body_inputs = {name for n in body for name in n.input}
    tail_inputs = {name for n in tail for name in n.input}
    own = [t for t in model.graph.initializer if t.name in tail_inputs and t.name not in body_inputs]
    backbone = onnx.ModelProto()
    backbone.CopyFrom(model)
    del backbone.graph.node[:]
    backbone.graph.node.extend(body)
    kept = [t for t in model.graph.initializer if t.name not in {o.name for o in own}]
    del backbone.graph.initializer[:]
    backbone.graph.initializer.extend(kept)
    outputs = [o for o in model.graph.output if o.name == OUTPUT_NAME]
    del backbone.graph.output[:]
    backbone.graph.output.extend(outputs)
    made = {o for n in body for o in n.output}
    shapes = [v for v in model.graph.value_info if v.name in made]  # the tail's tensors are not the backbone's
    del backbone.graph.value_info[:]
    backbone.graph.value_info.extend(shapes)
    return backbone, tail, own


def join(converted: onnx.ModelProto, original: onnx.ModelProto, tail: list[onnx.NodeProto],
         own: list[onnx.TensorProto], float16_outputs: bool) -> onnx.ModelProto:
    """The converted backbone with the float32 tail put back: every float16 tensor the tail reads is
    cast to float32 first, and with ``float16_outputs`` the tail's graph outputs are cast to float16."""
    graph = converted.graph
    inferred = onnx.shape_inference.infer_shapes(converted)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input,
                                                            *inferred.graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    produced = {o for n in tail for o in n.output}
    renamed: dict[str, str] = {}
    for node in tail:
        for name in node.input:
            if name not in produced and name not in renamed and types.get(name) == TensorProto.FLOAT16:
                renamed[name] = f"{name}_as_float32"
                graph.node.append(helper.make_node("Cast", [name], [renamed[name]], to=TensorProto.FLOAT,
                                                   name=f"{name}_to_float32"))
    final_outputs = [o for o in original.graph.output if o.name in produced]
    for node in tail:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [renamed.get(name, name) for name in copy.input]
        if float16_outputs:
            copy.output[:] = [f"{o}_float32" if o in {f.name for f in final_outputs} else o for o in copy.output]
        graph.node.append(copy)
    graph.initializer.extend(own)
    for out in final_outputs:
        value = onnx.ValueInfoProto()
        value.CopyFrom(out)
        if float16_outputs:
            graph.node.append(helper.make_node("Cast", [f"{out.name}_float32"], [out.name], to=TensorProto.FLOAT16,
                                               name=f"{out.name}_to_float16"))
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
        graph.output.append(value)
    return converted
