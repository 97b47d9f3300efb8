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


def test_entries_are_followed_through_gathers_concats_and_unsqueezes():
    """ORT's transpose optimizer writes Shape(Transpose(x))[-1] as Gather(Gather(Shape(x), perm), -1): the head
    size is still found; a Concat of static entries and an Unsqueezed static scalar fold too, a symbolic one not."""

    def i64(name, v):
        dims, vals = ([len(v)], v) if isinstance(v, list) else ([], [v])
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, dims, vals))

    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),  # [batch, 4, seq, 16]
        i64("perm", [0, 2, 3, 1]),
        i64("m1", -1),
        i64("zero", [0]),
        helper.make_node("Gather", ["shape", "perm"], ["tshape"], axis=0),  # [batch, seq, 16, 4]
        helper.make_node("Gather", ["tshape", "m1"], ["heads"], axis=0),  # 4
        helper.make_node("Gather", ["tshape", "zero"], ["batch"], axis=0),  # [batch]: symbolic
        helper.make_node("Unsqueeze", ["heads", "zero"], ["heads1"]),  # [4]
        helper.make_node("Slice", ["tshape", i64_name := "two", "big"], ["tail"]),  # [16, 4]
        helper.make_node("Concat", ["tail", "heads1"], ["joined"], axis=0),  # [16, 4, 4]
        helper.make_node("Concat", ["batch", "heads1"], ["mixed"], axis=0),  # [batch, 4]: symbolic
    ]
    nodes[4:4] = [i64(i64_name, [2]), i64("big", [1 << 62])]
    outs = ("heads", "joined", "mixed")
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, "seq", 16])],
        [helper.make_tensor_value_info(n, TensorProto.INT64, None) for n in outs],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    readers = {}
    for name in outs:
        v = next(o for o in model.graph.outputs if o.name == name)
        readers[name] = ir.Node("", "Identity", [v], num_outputs=1, name=f"read_{name}")
        model.graph.append(readers[name])
    assert StaticShapePass()(model).modified
    got = {name: node.inputs[0].producer() for name, node in readers.items()}
    assert got["heads"].op_type == "Constant"
    assert np.asarray(got["heads"].attributes["value"].value.numpy()).tolist() == 4
    assert got["joined"].op_type == "Constant"
    assert np.asarray(got["joined"].attributes["value"].value.numpy()).tolist() == [16, 4, 4]
    assert got["mixed"].op_type == "Concat"


def test_values_get_one_name_across_if_branches():
    """Two If branches that reuse value names (as merged decoders do): after the pass every value name is unique,
    the main graph's names are kept, and the model still computes the same."""
    import onnxruntime as ort
    from iceformer.rewriter._shapes import UniqueValueNamesPass

    def branch(name, op):
        nodes = [helper.make_node(op, ["x", "x"], ["t"]), helper.make_node("Shape", ["t"], ["y_" + name])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info("y_" + name, TensorProto.INT64, [2])])

    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("then", "Add"), else_branch=branch("else", "Mul"))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["t"]), node],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2]), helper.make_tensor_value_info("t", 1, [2, 3])],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    assert UniqueValueNamesPass()(model).modified
    names = [v.name for n in ir.traversal.RecursiveGraphIterator(model.graph) for v in n.outputs]
    assert len(names) == len(set(names)) == 6
    assert [v.name for v in model.graph.outputs] == ["y", "t"]
    proto = ir.serde.serialize_model(model)
    session = ort.InferenceSession(proto.SerializeToString())
    assert session.run(["y"], {"c": np.array(True), "x": np.ones((2, 3), np.float32)})[0].tolist() == [2, 3]
    assert not UniqueValueNamesPass()(model).modified


def test_contrib_shapes_are_inferred_without_touching_the_weights():
    """A value behind a com.microsoft op gets its shape from onnxruntime's symbolic inference, which sees the weights
    as unread external references (no copy of them); the model keeps its own weight tensors."""
    from iceformer.rewriter._shapes import ContribShapePass
    from onnx import numpy_helper

    w = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("FastGelu", ["h"], ["g"], domain="com.microsoft"),
        helper.make_node("Relu", ["g"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    )
    model = ir.serde.deserialize_model(proto)
    before = model.graph.initializers["w"].const_value
    assert ContribShapePass()(model).modified
    (relu,) = [n for n in model.graph if n.op_type == "Relu"]
    assert relu.inputs[0].shape is not None and list(relu.inputs[0].shape)[1] == 48
    assert model.graph.initializers["w"].const_value is before
    np.testing.assert_array_equal(before.numpy(), w)
