"""Pass: parts of a shape that are static become constants.

optimum and the TorchScript exporter compute SDPA's scale at run time, 1/sqrt(D) from `Shape(Q)[-1]`, and Q's
shape has symbolic batch and sequence axes, so constant folding cannot fold the Shape. After shape inference the
head size is known (Reshape targets, weight shapes); this pass replaces every `Slice` or `Gather` of a `Shape` whose
selected dimensions are all static by a constant (and `Shape(start, end)` likewise), so that folding then reduces the
scale to a number. Symbolic dimensions are never guessed: a selection that touches one is left as it was.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult


def _const(v: ir.Value | None) -> ir.TensorProtocol | None:
    return None if v is None else ir.convenience.get_const_tensor(v)  # initializer or Constant node


def _ints(v: ir.Value | None) -> list[int] | None:
    t = _const(v)
    return None if t is None else [int(x) for x in np.asarray(t.numpy()).reshape(-1)]


def _static_dims(v: ir.Value | None) -> list[int | None] | None:
    if v is None or v.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in v.shape]


def _selected(node: ir.Node, dims: list[int | None]) -> list[int | None] | None:
    """The dims a Slice or Gather of the shape vector picks, or None when its parameters are not constant."""
    if node.op_type == "Gather" and len(node.inputs) == 2:
        picks = _ints(node.inputs[1])
        if picks is None or node.attributes.get_int("axis", 0) != 0 or _const(node.inputs[1]).shape.rank() > 1:
            return None
        return [dims[i] if -len(dims) <= i < len(dims) else None for i in picks]
    if node.op_type == "Slice" and len(node.inputs) >= 3:
        starts, ends = _ints(node.inputs[1]), _ints(node.inputs[2])
        axes = _ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else [0]
        steps = _ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
        if starts is None or ends is None or axes != [0] or steps is None or len(starts) != 1 or len(steps) != 1:
            return None
        return dims[slice(starts[0], ends[0], steps[0])]
    return None


def _replace_with_constant(graph: ir.Graph, node: ir.Node, values: list[int], scalar: bool) -> None:
    array = np.array(values[0] if scalar else values, dtype=np.int64)
    const = ir.Node(
        "",
        "Constant",
        [],
        {"value": ir.AttrTensor("value", ir.tensor(array))},
        num_outputs=1,
        name=f"{node.name or node.op_type}_static",
    )
    out = node.outputs[0]
    const.outputs[0].name = f"{out.name}_static"
    const.outputs[0].shape, const.outputs[0].type = ir.Shape(list(array.shape)), ir.TensorType(ir.DataType.INT64)
    graph.insert_before(node, const)
    for use in list(out.uses()):  # node inputs only: a graph output keeps its producer
        use.node.replace_input_with(use.idx, const.outputs[0])


class StaticShapePass(InPlacePass):
    """Static parts of Shape vectors -> constants (run shape inference first)."""

    def call(self, model: ir.Model) -> PassResult:
        modified = False
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            if node.op_type != "Shape" or node.domain not in ("", "ai.onnx"):
                continue
            dims = _static_dims(node.inputs[0])
            if dims is None:
                continue
            start = node.attributes.get_int("start", 0)
            end = node.attributes.get_int("end", len(dims))
            dims = dims[slice(start, end)]
            graph = node.graph
            if all(d is not None for d in dims):
                _replace_with_constant(graph, node, dims, scalar=False)
                modified = True
                continue
            for use, _ in list(node.outputs[0].uses()):
                if use.graph is not graph:
                    continue
                picked = _selected(use, dims)
                if picked and all(d is not None for d in picked):
                    scalar = use.op_type == "Gather" and _const(use.inputs[1]).shape.rank() == 0
                    _replace_with_constant(graph, use, picked, scalar)
                    modified = True
        return PassResult(model, modified)
