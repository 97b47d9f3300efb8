"""Pass: parts of a shape that are static become constants.

optimum and the TorchScript exporter compute SDPA's scale at run time, 1/sqrt(D) from `Shape(Q)[-1]`, and Q's
shape has symbolic batch and sequence axes, so constant folding cannot fold the Shape. After shape inference the
head size is known (Reshape targets, weight shapes); this pass follows the entries of every Shape through the ops
that select, reorder and join them and replaces each derived value whose entries are all static by a constant, so
that folding then reduces the scale to a number. Symbolic dimensions are never guessed: a value that holds one is
left as it was.
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


Known = tuple[list[int | None], bool]  # a shape-derived int vector with its static entries; True: a scalar


def _known_input(v: ir.Value | None, known: dict[int, Known]) -> Known | None:
    """What is known of an int vector input: propagated from a Shape, or a constant."""
    if v is None:
        return None
    if id(v) in known:
        return known[id(v)]
    t = _const(v)
    if t is None or t.dtype not in (ir.DataType.INT64, ir.DataType.INT32) or t.shape.rank() > 1:
        return None
    return [int(x) for x in np.asarray(t.numpy()).reshape(-1)], t.shape.rank() == 0


def _propagate(node: ir.Node, known: dict[int, Known]) -> Known | None:
    """The entries of `node`'s output that are static, for the ops that move shape entries around (Shape, and
    Gather / Slice / Concat / Unsqueeze / Squeeze of such vectors with constant parameters); None otherwise."""
    if node.domain not in ("", "ai.onnx"):
        return None
    op = node.op_type
    if op == "Shape":
        dims = _static_dims(node.inputs[0])
        if dims is None:
            return None
        return dims[slice(node.attributes.get_int("start", 0), node.attributes.get_int("end", len(dims)))], False
    ins = [_known_input(v, known) for v in node.inputs]
    if not ins or ins[0] is None or (op != "Concat" and ins[0][1]):
        return None
    vec = ins[0][0]
    if op == "Gather" and len(ins) == 2 and ins[1] is not None and node.attributes.get_int("axis", 0) == 0:
        picks, scalar = ins[1]
        if not all(-len(vec) <= i < len(vec) for i in picks):
            return None
        return [vec[i] for i in picks], scalar
    if op == "Slice" and len(ins) >= 3 and all(k is not None for k in ins[1:]):
        starts, ends = ins[1][0], ins[2][0]
        axes = ins[3][0] if len(ins) > 3 else [0]
        steps = ins[4][0] if len(ins) > 4 else [1]
        if len(starts) != 1 or len(ends) != 1 or axes not in ([0], [-1]) or len(steps) != 1 or steps[0] == 0:
            return None
        return vec[slice(starts[0], ends[0], steps[0])], False
    if op == "Concat" and node.attributes.get_int("axis", 0) in (0, -1) and all(k is not None for k in ins):
        return [d for k in ins for d in k[0]], False
    if op == "Squeeze" and len(vec) == 1:
        return vec, True
    return None


def _unsqueezed_scalar(node: ir.Node, known: dict[int, Known]) -> Known | None:
    """Unsqueeze of a known scalar to a 1-vector (axes [0])."""
    if node.op_type != "Unsqueeze" or node.domain not in ("", "ai.onnx") or not node.inputs:
        return None
    x = _known_input(node.inputs[0], known)
    axes = _ints(node.inputs[1]) if len(node.inputs) > 1 else list(node.attributes.get_ints("axes", []))
    if x is None or not x[1] or axes not in ([0], [-1]):
        return None
    return x[0], False


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
    """Static parts of shape vectors -> constants (run shape inference first). What is known of each int vector
    derived from a Shape is carried through the ops that move its entries (ORT's transpose optimizer, for one,
    writes Shape(Transpose(x))[i] as Gather(Gather(Shape(x), perm), i)); a derived value whose entries are all
    static becomes a Constant."""

    def call(self, model: ir.Model) -> PassResult:
        modified = False
        known: dict[int, Known] = {}
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            got = _propagate(node, known) or _unsqueezed_scalar(node, known)
            if got is None:
                continue
            known[id(node.outputs[0])] = got
            dims, scalar = got
            if all(d is not None for d in dims) and node.outputs[0].uses():
                _replace_with_constant(node.graph, node, dims, scalar)
                modified = True
        return PassResult(model, modified)


_BIG = 1024  # elements above which a float initializer is a weight: its shape matters to inference, its data not


def _weightless_proto(model: ir.Model):
    """The model as a proto whose float weights are external references that are never read: shape inference needs
    their shapes only, and a copy of a multi-GB model's weights would double its memory."""
    floats = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    for v in model.graph.initializers.values():
        t = v.const_value
        if t is not None and t.dtype in floats and t.size > _BIG:
            swapped.append((v, t))
            v.const_value = ir.ExternalTensor("(not read)", 0, t.nbytes, t.dtype, shape=t.shape, name=v.name)
    try:
        return ir.serde.serialize_model(model)
    finally:
        for v, t in swapped:
            v.const_value = t


class ContribShapePass(InPlacePass):
    """Shapes through com.microsoft ops (ORT's transformers optimizer writes SkipLayerNormalization, FastGelu, ...),
    which onnx's shape inference cannot see through: onnxruntime's symbolic shape inference knows them. Only values
    still without a shape get one; a model it cannot infer is left as it was."""

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        if not any(n.domain == "com.microsoft" for n in graph):
            return PassResult(model, False)
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        try:
            inferred = SymbolicShapeInference.infer_shapes(_weightless_proto(model), auto_merge=True)
        except Exception:  # noqa: BLE001 - its failures are many and untyped; the shapes are a help, not a need
            return PassResult(model, False)
        if inferred is None:
            return PassResult(model, False)
        values = {v.name: v for n in graph for v in n.outputs}
        modified = False
        for info in inferred.graph.value_info:
            v = values.get(info.name)
            tensor = info.type.tensor_type
            if v is None or v.shape is not None or not tensor.HasField("shape"):
                continue
            v.shape = ir.Shape(
                [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
            )
            if v.type is None and tensor.elem_type:
                v.type = ir.TensorType(ir.DataType(tensor.elem_type))
            modified = True
        return PassResult(model, modified)


class UniqueValueNamesPass(InPlacePass):
    """Every value named once in the whole model. Merged decoders repeat value names in their If branches, and
    shape inference hands its results back by name, so a value in one branch would get its namesake's shape from
    the other (an Expand's 1-D shape input read as 2-D: a model onnxruntime then refuses). Values of subgraphs that
    repeat a name seen before get a suffix; the main graph's names, and so its inputs and outputs, stay. (onnx-ir's
    NameFixPass keeps names unique only along a graph's parents, not across sibling branches: tried, the merged
    decoder still failed.)"""

    def call(self, model: ir.Model) -> PassResult:
        main = model.graph
        seen = {v.name for v in [*main.inputs, *main.outputs, *main.initializers.values()]}
        seen.update(o.name for n in main for o in n.outputs)
        renamed = 0

        def claim(v: ir.Value) -> None:
            nonlocal renamed
            if v.name in seen:
                renamed += 1
                v.name = f"{v.name}__{renamed}"
            seen.add(v.name)

        for node in ir.traversal.RecursiveGraphIterator(main):
            for attr in node.attributes.values():
                graphs = [attr.value] if attr.type == ir.AttributeType.GRAPH else []
                graphs += list(attr.value) if attr.type == ir.AttributeType.GRAPHS else []
                for g in graphs:
                    for v in g.inputs:
                        claim(v)
            if node.graph is not main:
                for v in node.outputs:
                    claim(v)
        return PassResult(model, renamed > 0)
