"""The model-local function `iceformer.KnnAttention`: exact attention in standard ONNX ops.

Lets a rewritten model run (exactly) in plain onnxruntime without the iceformer library, and lets ONNX shape
inference type the node; when the library is registered, onnxruntime runs the native kernel instead. The body
covers what the rewriter emits: four inputs (additive float mask), `scale` given, GQA by head repetition.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..ops import contract


def reference_function(opset: int) -> onnx.FunctionProto:
    """softmax(scale * Q repeat(K)^T + attn_mask) repeat(V), for a model whose ai.onnx opset is `opset` (>= 15)."""
    n = helper.make_node
    c = lambda name, value: n("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(value)], value))  # noqa: E731
    nodes = [
        c("ax2", [2]),
        n("Shape", ["Q"], ["q_b_h"], start=0, end=2),  # [B, Hq]
        n("Shape", ["K"], ["k_b"], start=0, end=1),
        n("Shape", ["K"], ["k_h"], start=1, end=2),
        n("Shape", ["K"], ["k_td"], start=2, end=4),
        n("Shape", ["V"], ["v_td"], start=2, end=4),
        n("Shape", ["Q"], ["q_h"], start=1, end=2),
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
        n("Add", ["logits", "attn_mask"], ["masked"]),
        n("Softmax", ["masked"], ["p"], axis=-1),
        n("MatMul", ["p", "v4"], ["Y"]),
    ]
    # Constant(value_float = @scale): the node's scale attribute, by reference.
    scale_node = nodes[20]
    ref = onnx.AttributeProto()
    ref.name = "value_float"
    ref.ref_attr_name = "scale"
    ref.type = onnx.AttributeProto.FLOAT
    scale_node.attribute.append(ref)
    return helper.make_function(
        contract.DOMAIN,
        contract.OP_TYPE,
        ["Q", "K", "V", "attn_mask"],
        ["Y"],
        nodes,
        [helper.make_opsetid("", opset)],
        attributes=[a.name for a in contract.ATTRIBUTES],
        doc_string=__doc__,
    )
