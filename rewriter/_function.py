"""The model-local function `iceformer.KnnAttention`: exact attention in standard ONNX ops.

Lets a rewritten model run (exactly) in plain onnxruntime without the iceformer library, and lets ONNX shape
inference type the node; when the library is registered, onnxruntime runs the native kernel instead. The body
covers what the rewriter emits: all five inputs (additive float mask, key_padding_mask [B,T]), `scale`,
`is_causal` and `local_window_size` always set, GQA by head repetition.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..ops import contract


def reference_function(opset: int) -> onnx.FunctionProto:
    """softmax(scale * Q repeat(K)^T + attn_mask) repeat(V), for a model whose ai.onnx opset is `opset` (>= 13)."""
    n = helper.make_node

    def c(name, value):
        return n("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(value)], value))

    def dims(shape: str, start: int, end: int, out: str) -> list:
        # Shape(x)[start:end] by Slice: Shape's start/end attributes need opset 15, Slice's inputs only opset 10.
        return [c(f"{out}_s", [start]), c(f"{out}_e", [end]), n("Slice", [shape, f"{out}_s", f"{out}_e"], [out])]

    nodes = [
        c("ax2", [2]),
        n("Shape", ["Q"], ["q_shape"]),
        n("Shape", ["K"], ["k_shape"]),
        n("Shape", ["V"], ["v_shape"]),
        *dims("q_shape", 0, 2, "q_b_h"),  # [B, Hq]
        *dims("k_shape", 0, 1, "k_b"),
        *dims("k_shape", 1, 2, "k_h"),
        *dims("k_shape", 2, 4, "k_td"),
        *dims("v_shape", 2, 4, "v_td"),
        *dims("q_shape", 1, 2, "q_h"),
        n("Div", ["q_h", "k_h"], ["rep"]),
        n("Concat", ["k_b", "k_h", "rep", "k_td"], ["k5_shape"], axis=0),
        n("Concat", ["k_b", "k_h", "rep", "v_td"], ["v5_shape"], axis=0),
        n("Concat", ["q_b_h", "k_td"], ["k4_shape"], axis=0),
        n("Concat", ["q_b_h", "v_td"], ["v4_shape"], axis=0),
        n("Unsqueeze", ["K", "ax2"], ["k5"]),
        n("Unsqueeze", ["V", "ax2"], ["v5"]),
        n("Expand", ["k5", "k5_shape"], ["k5e"]),
        n("Expand", ["v5", "v5_shape"], ["v5e"]),
        n("Reshape", ["k5e", "k4_shape"], ["k4"]),
        n("Reshape", ["v5e", "v4_shape"], ["v4"]),
        n("Transpose", ["k4"], ["kt"], perm=[0, 1, 3, 2]),
        n("MatMul", ["Q", "kt"], ["qk"]),
        helper.make_node("Constant", [], ["scale_c"]),
        n("Mul", ["qk", "scale_c"], ["logits"]),
        n("Add", ["logits", "attn_mask"], ["masked0"]),
        # key_padding_mask [B,T] (nonzero = real key) -> 0 / -inf on [B,1,1,T]
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])),
        helper.make_node(
            "Constant", [], ["ninf"], value=helper.make_tensor("ninf", TensorProto.FLOAT, [], [float("-inf")])
        ),
        n("Cast", ["key_padding_mask"], ["kpm_b"], to=TensorProto.BOOL),
        n("Where", ["kpm_b", "zero", "ninf"], ["kpm_f"]),
        c("ax12", [1, 2]),
        n("Unsqueeze", ["kpm_f", "ax12"], ["kpm_4"]),
        n("Add", ["masked0", "kpm_4"], ["masked1"]),
        # is_causal: key j visible to query i iff j <= i + T - S (bottom-right aligned)
        *dims("q_shape", 2, 3, "s_1d"),
        *dims("k_shape", 2, 3, "t_1d"),
        c("ax0", [0]),
        c("ax1", [1]),
        n("Squeeze", ["s_1d", "ax0"], ["s0"]),
        n("Squeeze", ["t_1d", "ax0"], ["t0"]),
        helper.make_node("Constant", [], ["i0"], value=helper.make_tensor("i0", TensorProto.INT64, [], [0])),
        helper.make_node("Constant", [], ["i1"], value=helper.make_tensor("i1", TensorProto.INT64, [], [1])),
        n("Range", ["i0", "s0", "i1"], ["ri"]),
        n("Range", ["i0", "t0", "i1"], ["rj"]),
        n("Sub", ["t0", "s0"], ["off"]),
        n("Add", ["ri", "off"], ["lim1"]),
        n("Unsqueeze", ["lim1", "ax1"], ["lim"]),
        n("Unsqueeze", ["rj", "ax0"], ["rj2"]),
        n("LessOrEqual", ["rj2", "lim"], ["allowed"]),
        helper.make_node("Constant", [], ["causal_i"]),
        n("Cast", ["causal_i"], ["causal_b"], to=TensorProto.BOOL),
        n("Not", ["causal_b"], ["not_causal"]),
        n("Or", ["allowed", "not_causal"], ["keep_c"]),
        # local_window_size W >= 1: key j visible to query i only if j > i + T - S - W
        helper.make_node("Constant", [], ["window_i"]),
        n("Sub", ["lim", "window_i"], ["win_lo"]),
        n("Greater", ["rj2", "win_lo"], ["in_window"]),
        n("Less", ["window_i", "i0"], ["no_window"]),
        n("Or", ["in_window", "no_window"], ["keep_w"]),
        n("And", ["keep_c", "keep_w"], ["keep"]),
        n("Where", ["keep", "zero", "ninf"], ["causal_f"]),
        n("Add", ["masked1", "causal_f"], ["masked"]),
        n("Softmax", ["masked"], ["p_raw"], axis=-1),
        # A row with no visible key is all -inf, so NaN after Softmax: zeros, as the op's contract says.
        n("IsNaN", ["p_raw"], ["p_nan"]),
        n("Where", ["p_nan", "zero", "p_raw"], ["p"]),
        n("MatMul", ["p", "v4"], ["Y"]),
    ]
    # Constant(value_float = @scale) and Constant(value_int = @is_causal): the node's attributes, by reference.
    for out_name, attr, kind in (
        ("scale_c", "scale", onnx.AttributeProto.FLOAT),
        ("causal_i", "is_causal", onnx.AttributeProto.INT),
        ("window_i", "local_window_size", onnx.AttributeProto.INT),
    ):
        node = next(x for x in nodes if x.op_type == "Constant" and list(x.output) == [out_name])
        ref = onnx.AttributeProto()
        ref.name = "value_float" if kind == onnx.AttributeProto.FLOAT else "value_int"
        ref.ref_attr_name = attr
        ref.type = kind
        node.attribute.append(ref)
    return helper.make_function(
        contract.DOMAIN,
        contract.OP_TYPE,
        ["Q", "K", "V", "attn_mask", "key_padding_mask"],
        ["Y"],
        nodes,
        [helper.make_opsetid("", opset)],
        attributes=[a.name for a in contract.ATTRIBUTES],
        doc_string=__doc__,
    )
