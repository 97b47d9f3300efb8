"""StaticShapePass: static parts of Shape vectors become constants; symbolic ones are never guessed."""

import numpy as np
import onnx_ir as ir
from iceformer.rewriter._shapes import StaticShapePass
from onnx import TensorProto, helper


def _model():
    def i64(name, v):
        dims, vals = ([len(v)], v) if isinstance(v, list) else ([], [v])
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, dims, vals))

    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        i64("m1", [-1]),
        i64("big", [1 << 62]),
        i64("zero", [0]),
        i64("two", [2]),
        i64("one", 1),
        helper.make_node("Slice", ["shape", "m1", "big"], ["last"]),  # [16]: static
        helper.make_node("Slice", ["shape", "zero", "two"], ["lead"]),  # [batch, 4]: symbolic, left alone
        helper.make_node("Gather", ["shape", "one"], ["heads"], axis=0),  # 4: static scalar
        helper.make_node("Shape", ["x"], ["tail2"], start=2),  # [seq, 16]: symbolic, left alone
    ]
    outs = [helper.make_tensor_value_info(n, TensorProto.INT64, None) for n in ("last", "lead", "heads", "tail2")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, "seq", 16])], outs
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_static_slices_and_gathers_become_constants():
    model = _model()
    # Graph outputs keep their producers (the pass rewires node inputs only): read each through an Identity.
    readers = {}
    for name in ("last", "lead", "heads", "tail2"):
        v = next(o for o in model.graph.outputs if o.name == name)
        node = ir.Node("", "Identity", [v], num_outputs=1, name=f"read_{name}")
        model.graph.append(node)
        readers[name] = node
    assert StaticShapePass()(model).modified
    got = {name: node.inputs[0] for name, node in readers.items()}
    assert got["last"].producer().op_type == "Constant"
    assert np.asarray(got["last"].producer().attributes["value"].value.numpy()).tolist() == [16]
    assert got["heads"].producer().op_type == "Constant"
    assert np.asarray(got["heads"].producer().attributes["value"].value.numpy()).tolist() == 4
    assert got["lead"].producer().op_type == "Slice"  # batch is symbolic
    assert got["tail2"].producer().op_type == "Shape"  # seq is symbolic
