"""Pattern rules, one per exporter form, each rewriting an attention core into the canonical Sdpa.

Declarative onnxscript rules: `pattern` describes the form, `check` accepts or fails with a reason (the
matcher's tracer reports it), `rewrite` emits the canonical node. No state on `self`: the scale is derived from
the match bindings by `_scale_of`, called by both.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..ops import contract
from . import _canonical, _masks


def _constant_scalar(value: ir.Value | None) -> float | None:
    """The single float held by a constant value (initializer or Constant node), else None."""
    if value is None:
        return None
    const = value.const_value
    if const is None and value.producer() is not None and value.producer().op_type == "Constant":
        attr = value.producer().attributes.get("value")
        const = attr.value if attr is not None else None
    if const is None:
        return None
    arr = np.asarray(const.numpy())
    if arr.size != 1:
        return None
    return float(arr.reshape(()))


def _scale_of(bindings: dict) -> tuple[float | None, str]:
    """Product of the Q, K and product scalings of a match: (scale, "") or (None, reason)."""
    scale = 1.0
    for tag, var in (("q_scaling", "q_scale"), ("k_scaling", "k_scale"), ("qk_scaling", "qk_scale")):
        kind = bindings.get(tag, "none")
        if kind == "none":
            continue
        v = _constant_scalar(bindings.get(var))
        if v is None or v == 0.0 or not math.isfinite(v):
            return None, f"{var} is not a constant nonzero scalar (run-time scale)"
        scale *= v if kind == "mul" else 1.0 / v
    return scale, ""


def _ints_attr(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return None if attr is None else list(attr.value) if attr.type == ir.AttributeType.INTS else [attr.value]


def _shape_entries(v: ir.Value | None, key: ir.Value, depth: int = 10) -> list | None:
    """The entries of a 1-D shape vector as ints or ("dim", i) (dimension i of `key`), when it is built from
    constants and Shape(key) by Slice/Concat/Gather/Unsqueeze; else None."""
    if v is None or depth == 0:
        return None
    const = v.const_value
    node = v.producer()
    if const is None and node is not None and node.op_type == "Constant" and "value" in node.attributes:
        const = node.attributes["value"].value
    if const is not None:
        return [int(x) for x in np.asarray(const.numpy()).reshape(-1)]
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Shape" and node.inputs[0] is key and key.shape is not None:
        dims = [("dim", i) for i in range(key.shape.rank())]
        return dims[node.attributes.get_int("start", 0) : node.attributes.get_int("end", len(dims))]
    sub = [_shape_entries(i, key, depth - 1) for i in node.inputs] if node.op_type != "Shape" else []
    if node.op_type == "Concat" and all(x is not None for x in sub):
        return [e for x in sub for e in x]
    if node.op_type == "Unsqueeze" and sub and sub[0] is not None and len(sub[0]) == 1:
        return sub[0]
    if node.op_type == "Gather" and len(sub) == 2 and sub[0] is not None and sub[1] is not None and len(sub[1]) == 1:
        i = sub[1][0]
        return [sub[0][i]] if -len(sub[0]) <= i < len(sub[0]) else None
    if node.op_type == "Slice" and sub and sub[0] is not None and all(x is not None and len(x) == 1 for x in sub[1:3]):
        axes = sub[3] if len(sub) > 3 and node.inputs[3] is not None else [0]
        steps = sub[4] if len(sub) > 4 and node.inputs[4] is not None else [1]
        if axes not in ([0], [-1]) or steps != [1]:
            return None
        start, end = sub[1][0], sub[2][0]
        return sub[0][start:end]  # Python slicing clamps like ONNX for step 1
    return None


def _is_dim(entry, key: ir.Value, i: int) -> bool:
    if entry == ("dim", i):
        return True
    return isinstance(entry, int) and key.shape is not None and key.shape[i] == entry


def _check_flat_transpose(key: ir.Value, flat_shape: ir.Value, kt_shape: ir.Value) -> str:
    """Reshape(key [B,H,T,D], [-1,T,D]) -> Transpose(0,2,1) -> Reshape(., [B,H,D,T]) is K^T: "" or why not."""
    first, second = _shape_entries(flat_shape, key), _shape_entries(kt_shape, key)
    if first is None or second is None:
        return "K^T reshape targets are not built from constants and Shape(key)"
    if len(first) != 3 or not (_is_dim(first[1], key, 2) and _is_dim(first[2], key, 3)):
        return f"first K^T reshape target {first} is not [*, T, D] of the key"
    if len(second) != 4 or not all(_is_dim(e, key, i) for e, i in zip(second, (0, 1, 3, 2))):
        return f"second K^T reshape target {second} is not [B, H, D, T] of the key"
    return ""


def _scaled(op, x, s, tag):
    return pattern.OrValue([op.Mul(x, s), op.Div(x, s), x], tag_var=tag, tag_values=["mul", "div", "none"])


class _CoreRule(pattern.RewriteRuleClassBase):
    """Configuration shared by the core rules, fixed at construction (never changed while matching):
    `allow_bias` lets a core whose mask is a bias through (it is lowered to an exact-only op), `excluded` holds
    the ids of root nodes left unchanged (layer selection). Lowering classifies the mask again and gives a
    bias core top_k = 0."""

    def __init__(self, allow_bias: bool = False, excluded: frozenset[int] = frozenset()):
        super().__init__()
        self._allow_bias = allow_bias
        self._excluded = excluded

    def _check_common(self, context, mask: ir.Value | None, result: pattern.MatchResult):
        if id(context.root) in self._excluded:
            return result.fail("not selected (layer selection: --layers / --skip-first)")
        if mask is not None and not self._allow_bias and mask.dtype != ir.DataType.BOOL:
            graph = context.graph_or_function
            if isinstance(graph, ir.Graph) and _masks.classify(mask, graph).kind == _masks.MaskKind.BIAS:
                return result.fail(
                    "the mask is a bias (relative positions / ALiBi): top-k cannot honour it; "
                    "left unchanged (allow_bias maps it to an exact-only op)"
                )
        return result


class DecomposedSdpa(_CoreRule):
    """MatMul(Q', K'^T) [Mul/Div scale] [Where(cond, ., fill)] [Add(mask)] -> Softmax(-1) [Where(IsNaN, 0, .)]
    [Cast to float32 x0..2] -> MatMul(P, V): TorchScript, optimum and dynamo exports below opset 23, eager attention at any opset.
    K^T as Transpose(0,1,3,2) of [B,H,T,D], Transpose(0,2,3,1) of [B,T,H,D], or dynamo's
    Reshape([*,T,D]) -> Transpose(0,2,1) -> Reshape([B,H,D,T]) of [B,H,T,D] (checked from the shape vectors)."""

    def pattern(self, op, query, key, value, q_scale, k_scale, qk_scale, cond, fill, mask, flat_shape, kt_shape, like):
        kt = pattern.OrValue(
            [
                op.Transpose(key, perm=[0, 1, 3, 2]),
                op.Transpose(key, perm=[0, 2, 3, 1]),
                op.Reshape(
                    op.Transpose(op.Reshape(key, flat_shape, _allow_other_attributes=True), perm=[0, 2, 1]),
                    kt_shape,
                    _allow_other_attributes=True,
                ),
            ],
            tag_var="key_layout",
            tag_values=["BHTD", "BTHD", "flat"],
        )
        scores = op.MatMul(_scaled(op, query, q_scale, "q_scaling"), _scaled(op, kt, k_scale, "k_scaling"))
        scores = _scaled(op, scores, qk_scale, "qk_scaling")
        scores = pattern.OrValue([op.Where(cond, scores, fill), scores], tag_var="has_cond", tag_values=[True, False])
        scores = pattern.OrValue([op.Add(scores, mask), scores], tag_var="has_mask", tag_values=[True, False])
        probs = op.Softmax(scores, axis=-1)
        probs = pattern.OrValue(
            [op.Where(op.IsNaN(probs), pattern.ANY_VALUE, probs), probs], tag_var="nan_guard", tag_values=[True, False]
        )
        # No-op Casts to float32 (dynamo without optimisation emits them around softmax).
        # T5's `.type_as(scores)` is CastLike (a no-op in a float32 core; checked).
        probs = pattern.OrValue(
            [op.Cast(op.Cast(probs, to=1), to=1), op.Cast(probs, to=1), op.CastLike(probs, like), probs],
            tag_var="casts",
            tag_values=[2, 1, "like", 0],
        )
        return op.MatMul(probs, value)

    def check(self, context, query, key, value, **b):
        result = pattern.MatchResult()
        for name, v in (("query", query), ("key", key), ("value", value)):
            if v.shape is not None and v.shape.rank() != 4:
                return result.fail(f"{name} has rank {v.shape.rank()}, expected 4", v)
        scale, why = _scale_of(b)
        if scale is None:
            return result.fail(why)
        if b.get("casts") == "like" and b.get("like") is not None and b["like"].dtype not in (None, ir.DataType.FLOAT):
            return result.fail("CastLike after Softmax changes the type (not a float32 core)")
        if not self._check_common(context, b.get("mask") if b.get("has_mask") else None, result):
            return result
        if b.get("key_layout") == "flat":
            why = _check_flat_transpose(key, b.get("flat_shape"), b.get("kt_shape"))
            if why:
                return result.fail(why)
        if b.get("has_cond"):
            fill = _constant_scalar(b.get("fill"))
            if fill is None or fill > contract.MASKED_AT_OR_BELOW:
                return result.fail("Where on the scores does not fill with a very negative constant (not a mask)")
        return result

    def rewrite(self, op, query, key, value, cond=None, mask=None, **b):
        scale, _ = _scale_of(b)
        if b["key_layout"] == "BTHD":
            key = op.Transpose(key, perm=[0, 2, 1, 3])
        mask = mask if b.get("has_mask") else None
        return op.Sdpa(
            query, key, value, cond if b.get("has_cond") else None, mask, scale=float(scale), _domain=_canonical.DOMAIN
        )


def _onnx_attention_refusal(node: ir.Node, tensors: dict[str, ir.Value], attn_mask: ir.Value | None) -> str:
    """Why a standard Attention node cannot become the canonical core ("" when it can): the attributes and shapes
    both Attention forms (with and without past) need."""
    attrs = node.attributes
    if attrs.get_float("softcap", 0.0) != 0.0:
        return "softcap is set"
    if attrs.get_int("qk_matmul_output_mode", 0) != 0:
        return "qk_matmul_output_mode is set"
    for name, v in tensors.items():
        if v.shape is None or v.shape.rank() != 4:
            return f"{name} is not known to be 4-D (3-D packed-head form)"
    if attrs.get_int("is_causal", 0) and attn_mask is not None:
        return "is_causal together with attn_mask"
    if "scale" not in attrs and not isinstance(tensors["query"].shape[3], int):
        return "no scale attribute and a symbolic head size"
    return ""


class OnnxAttention(_CoreRule):
    """The standard ONNX Attention (opset 23/24) with 4-D inputs, no past key/value and no softcap."""

    def pattern(self, op, query, key, value, attn_mask):
        return op.Attention(
            query, key, value, attn_mask, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["y"]
        )

    def check(self, context, query, key, value, attn_mask, y, **_):
        result = pattern.MatchResult()
        node = y.producer()
        if len(node.outputs) > 1 and any(o is not None and o.uses() for o in node.outputs[1:]):
            return result.fail("Attention outputs present_key/value or qk are used (past-KV form)")
        if len(node.inputs) > 4 and any(v is not None for v in node.inputs[4:]):
            return result.fail("Attention has past_key/past_value or nonpad_kv_seqlen inputs")
        tensors = {"query": query, "key": key, "value": value}
        if why := _onnx_attention_refusal(node, tensors, attn_mask):
            return result.fail(why)
        if node.attributes.get_int("is_causal", 0) and query.shape[2] != key.shape[2]:
            return result.fail(
                "is_causal with S != T: ONNX aligns it top-left without past inputs, the op bottom-right"
            )
        return self._check_common(context, attn_mask, result)

    def rewrite(self, op, query, key, value, attn_mask, y, **_):
        node = y.producer()
        scale = node.attributes.get_float("scale", None)
        d = query.shape[3]
        if scale is None:
            scale = 1.0 / math.sqrt(d) if isinstance(d, int) else None
        attrs = {"_domain": _canonical.DOMAIN}
        if scale is not None:
            attrs["scale"] = float(scale)
        if node.attributes.get_int("is_causal", 0):
            attrs["is_causal"] = 1
        cond, mask = None, None
        if attn_mask is not None:
            if attn_mask.dtype == ir.DataType.BOOL:
                cond = attn_mask
            else:
                mask = attn_mask
        return op.Sdpa(query, key, value, cond, mask, **attrs)


class OnnxAttentionWithPast(_CoreRule):
    """The standard ONNX Attention (opset 23/24) with past_key/past_value [B,Hkv,P,D] and 4-D inputs: the presents
    become Concat(past, new) on the sequence axis (what the op computes them as) and the core attends over them,
    causality bottom-right as ONNX aligns it when the cache comes through past_key."""

    def pattern(self, op, query, key, value):
        # attn_mask (input 3) is optional: read it and the pasts from the node rather than binding them.
        return op.Attention(
            query,
            key,
            value,
            _allow_other_inputs=True,
            _allow_other_attributes=True,
            _outputs=["y", "present_key", "present_value"],
        )

    @staticmethod
    def _optional(node: ir.Node) -> tuple[ir.Value | None, ir.Value | None, ir.Value | None]:
        """attn_mask, past_key, past_value."""
        return tuple((list(node.inputs) + [None] * 6)[3:6])

    def check(self, context, query, key, value, y, **_):
        result = pattern.MatchResult()
        node = y.producer()
        attn_mask, past_key, past_value = self._optional(node)
        if past_key is None or past_value is None:
            return result.fail("no past_key/past_value (the form without past)")
        if len(node.outputs) > 3 and node.outputs[3] is not None and node.outputs[3].uses():
            return result.fail("the qk output is used")
        if len(node.inputs) > 6 and node.inputs[6] is not None:
            return result.fail("nonpad_kv_seqlen is given (opset 24 padding form)")
        tensors = {"query": query, "key": key, "value": value, "past_key": past_key, "past_value": past_value}
        if why := _onnx_attention_refusal(node, tensors, attn_mask):
            return result.fail(why)
        return self._check_common(context, attn_mask, result)

    def rewrite(self, op, query, key, value, y, **_):
        node = y.producer()
        attn_mask, past_key, past_value = self._optional(node)
        scale = node.attributes.get_float("scale", None)
        attrs = {
            "_domain": _canonical.DOMAIN,
            "scale": float(scale if scale is not None else 1.0 / math.sqrt(query.shape[3])),
        }
        if node.attributes.get_int("is_causal", 0):
            attrs["is_causal"] = 1
        present_key = op.Concat(past_key, key, axis=2)
        present_value = op.Concat(past_value, value, axis=2)
        cond = attn_mask if attn_mask is not None and attn_mask.dtype == ir.DataType.BOOL else None
        mask = attn_mask if attn_mask is not None and cond is None else None
        return op.Sdpa(query, present_key, present_value, cond, mask, **attrs), present_key, present_value


def _multihead(op, query, key, value, outputs: list[str]):
    """com.microsoft.MultiHeadAttention over Q, K, V (other inputs read from the node), with these outputs."""
    return op.MultiHeadAttention(
        query,
        key,
        value,
        _domain="com.microsoft",
        _allow_other_inputs=True,
        _allow_other_attributes=True,
        _outputs=outputs,
    )


class MicrosoftMultiHeadAttention(_CoreRule):
    """com.microsoft.MultiHeadAttention with separate 3-D Q [B,S,H*D], K [B,T,H*D], V [B,T,H*Dv], an optional
    additive attention_bias and no packed bias, key_padding_mask or past: heads are split with Reshape/Transpose
    around the canonical core (static head sizes needed)."""

    def pattern(self, op, query, key, value):
        return _multihead(op, query, key, value, ["y"])

    def check(self, context, query, key, value, y, **_):
        result = pattern.MatchResult()
        node = y.producer()
        inputs = list(node.inputs) + [None] * 8
        if why := _ms_refusal(node, {3: "a packed bias", 4: "a key_padding_mask", 6: "past_key", 7: "past_value"}):
            return result.fail(why)
        if why := _ms_qkv_refusal(node, query, key, value):
            return result.fail(why)
        if node.attributes.get_float("mask_filter_value", -10000.0) > -1e3:
            return result.fail("mask_filter_value is not very negative")
        return self._check_common(context, inputs[5], result)

    def rewrite(self, op, query, key, value, y, **_):
        node = y.producer()
        heads = node.attributes.get_int("num_heads")
        d, dv = query.shape[2] // heads, value.shape[2] // heads
        attrs = _ms_core_attrs(node, d)
        bias = node.inputs[5] if len(node.inputs) > 5 else None
        core = op.Sdpa(
            _split_heads(op, query, heads, d),
            _split_heads(op, key, heads, d),
            _split_heads(op, value, heads, dv),
            None,
            bias,
            **attrs,
        )
        return _merge_heads(op, core, heads * dv)


class MicrosoftMultiHeadAttentionWithPast(_CoreRule):
    """com.microsoft.MultiHeadAttention with past_key/past_value [B,H,P,D] and new 3-D K/V (ORT's fused decoders):
    the presents become Concat(past, new heads) on the sequence axis and the core attends over them (causality
    bottom-right, as the op aligns `unidirectional` after a past); an optional attention_bias as the mask."""

    def pattern(self, op, query, key, value):
        return _multihead(op, query, key, value, ["y", "present_key", "present_value"])

    def check(self, context, query, key, value, y, **_):
        result = pattern.MatchResult()
        node = y.producer()
        inputs = list(node.inputs) + [None] * 10
        if inputs[6] is None or inputs[7] is None:
            return result.fail("no past_key/past_value (the form without past)")
        refused = {3: "packed bias", 4: "key_padding_mask", 8: "past_sequence_length", 9: "cache_indirection"}
        if why := next((f"MultiHeadAttention has a {w} input" for i, w in refused.items() if inputs[i]), ""):
            return result.fail(why)
        if node.attributes.get_int("past_present_share_buffer", 0):
            return result.fail("past_present_share_buffer is set")
        if why := _ms_qkv_refusal(node, query, key, value):
            return result.fail(why)
        return self._check_common(context, inputs[5], result)

    def rewrite(self, op, query, key, value, y, **_):
        node = y.producer()
        inputs = list(node.inputs) + [None] * 10
        heads = node.attributes.get_int("num_heads")
        d, dv = query.shape[2] // heads, value.shape[2] // heads
        present_key = op.Concat(inputs[6], _split_heads(op, key, heads, d), axis=2)
        present_value = op.Concat(inputs[7], _split_heads(op, value, heads, dv), axis=2)
        core = op.Sdpa(
            _split_heads(op, query, heads, d), present_key, present_value, None, inputs[5], **_ms_core_attrs(node, d)
        )
        return _merge_heads(op, core, heads * dv), present_key, present_value


class MicrosoftAttention(_CoreRule):
    """com.microsoft.Attention, what ORT's transformers optimizer writes for BERT-like encoders (and T5's encoder):
    input [B,S,H], packed QKV weights [H,3H'] and an optional bias, an optional mask_index (1-D valid lengths,
    right padding, or a 2-D 0/1 mask [B,T]), an optional additive attention_bias (T5's relative positions: a bias
    core, exact-only and only with allow_bias), no past, no rotary. Q/K/V are sliced from the packed projection
    and split into heads around the canonical core; the mask becomes the additive [B,1,1,T] form the lowering
    classifies (and the probes prove or refuse), plus the attention_bias when there is one.
    """

    def pattern(self, op, x, weights):
        return op.Attention(
            x,
            weights,
            _domain="com.microsoft",
            _allow_other_inputs=True,
            _allow_other_attributes=True,
            _outputs=["y"],
        )

    def check(self, context, x, weights, y, **_):
        result = pattern.MatchResult()
        node = y.producer()
        inputs = list(node.inputs) + [None] * 8
        if why := _ms_refusal(node, {4: "past", 6: "past_sequence_length"}):
            return result.fail(why)
        if node.attributes.get_int("do_rotary", 0) or node.attributes.get_int("past_present_share_buffer", 0):
            return result.fail("do_rotary or past_present_share_buffer is set")
        heads = node.attributes.get_int("num_heads", 0)
        sizes = _ms_qkv_sizes(node, weights)
        if sizes is None or heads <= 0 or any(s % heads for s in sizes) or sizes[0] != sizes[1]:
            return result.fail(f"packed QKV sizes {sizes} do not split into num_heads {heads} with Q = K")
        if x.shape is not None and x.shape.rank() != 3:  # unknown after ORT-only producers: the op requires 3-D
            return result.fail("input is not 3-D [B,S,H]")
        if inputs[3] is not None and _mask_index_rank(inputs[3]) not in (1, 2):
            return result.fail("mask_index is not 1-D lengths or a 2-D [B,T] mask (other forms are not handled)")
        return self._check_common(context, inputs[5], result)

    def rewrite(self, op, x, weights, y, **_):
        node = y.producer()
        inputs = list(node.inputs) + [None] * 8
        heads = node.attributes.get_int("num_heads")
        hq, hk, hv = _ms_qkv_sizes(node, weights)
        qkv = op.MatMul(x, weights) if inputs[2] is None else op.Add(op.MatMul(x, weights), inputs[2])
        axis = op.Constant(value_ints=[2])
        cut = lambda a, b: op.Slice(qkv, op.Constant(value_ints=[a]), op.Constant(value_ints=[b]), axis)  # noqa: E731
        q, k, v = cut(0, hq), cut(hq, hq + hk), cut(hq + hk, hq + hk + hv)
        mask_index, mask = inputs[3], None
        if mask_index is not None:
            if _mask_index_rank(mask_index) == 1:  # valid lengths: key j is real when j < length[b]
                t = op.Gather(op.Shape(x), op.Constant(value_int=1), axis=0)
                j = op.Range(op.Constant(value_int=0), t, op.Constant(value_int=1))
                real = op.Less(
                    op.Unsqueeze(j, op.Constant(value_ints=[0])),
                    op.Unsqueeze(op.Cast(mask_index, to=ir.DataType.INT64), op.Constant(value_ints=[1])),
                )
            else:
                real = op.Cast(mask_index, to=ir.DataType.BOOL)
            mask = op.Unsqueeze(
                op.Where(real, op.Constant(value_float=0.0), op.Constant(value_float=float("-inf"))),
                op.Constant(value_ints=[1, 2]),
            )
        if inputs[5] is not None:  # attention_bias [B or 1, Hq, S, T], added to the scaled logits like the mask
            mask = inputs[5] if mask is None else op.Add(mask, inputs[5])
        core = op.Sdpa(
            _split_heads(op, q, heads, hq // heads),
            _split_heads(op, k, heads, hk // heads),
            _split_heads(op, v, heads, hv // heads),
            None,
            mask,
            **_ms_core_attrs(node, hq // heads),
        )
        return _merge_heads(op, core, hv)


def _ms_qkv_refusal(node: ir.Node, query: ir.Value, key: ir.Value, value: ir.Value) -> str:
    """Why MultiHeadAttention's separate Q/K/V cannot be split into heads ("" when they can): each must be 3-D
    [B, S or T, heads * size] with a static hidden size, and Q and K of the same size."""
    heads = node.attributes.get_int("num_heads", 0)
    for name, v in (("query", query), ("key", key), ("value", value)):
        if v.shape is None or v.shape.rank() != 3 or not isinstance(v.shape[2], int):
            return f"{name} is not 3-D with a static hidden size (packed or 5-D form)"
        if heads <= 0 or v.shape[2] % heads:
            return f"{name} hidden size {v.shape[2]} is not a multiple of num_heads {heads}"
    return "query and key hidden sizes differ" if query.shape[2] != key.shape[2] else ""


def _ms_refusal(node: ir.Node, unsupported: dict[int, str]) -> str:
    """Why a com.microsoft attention node cannot become the canonical core for its inputs and outputs ("" if it
    can): one of the `unsupported` inputs (index -> what) is given, or a present output is used (past form)."""
    inputs = list(node.inputs) + [None] * (max(unsupported) + 1)
    for i, what in unsupported.items():
        if inputs[i] is not None:
            return f"{node.op_type} has a {what} input"
    if any(o is not None and o.uses() for o in node.outputs[1:]):
        return f"{node.op_type} outputs present (past form)"
    return ""


def _mask_index_rank(v: ir.Value) -> int | None:
    """Rank of a mask_index: from its shape, or 1 when it is EmbedLayerNormalization's mask_index output (valid
    lengths; shape inference cannot see through that com.microsoft op)."""
    if v.shape is not None:
        return v.shape.rank()
    node = v.producer()
    if (
        node is not None
        and node.domain == "com.microsoft"
        and node.op_type == "EmbedLayerNormalization"
        and v.index() == 1
    ):
        return 1
    return None


def _ms_qkv_sizes(node: ir.Node, weights: ir.Value) -> tuple[int, int, int] | None:
    """Hidden sizes of Q, K, V in the packed projection: qkv_hidden_sizes, or three equal thirds of the weights."""
    sizes = _ints_attr(node, "qkv_hidden_sizes")
    if sizes is not None and len(sizes) == 3:
        return tuple(sizes)
    if (
        weights.shape is None
        or weights.shape.rank() != 2
        or not isinstance(weights.shape[1], int)
        or weights.shape[1] % 3
    ):
        return None
    third = weights.shape[1] // 3
    return third, third, third


def _ms_core_attrs(node: ir.Node, d: int) -> dict:
    """Canonical attributes of a com.microsoft attention node: scale (attribute or 1/sqrt(D)), unidirectional."""
    attrs = {
        "scale": float(node.attributes.get_float("scale", 0.0) or 1.0 / math.sqrt(d)),
        "_domain": _canonical.DOMAIN,
    }
    if node.attributes.get_int("unidirectional", 0):
        attrs["is_causal"] = 1
    return attrs


def _split_heads(op, x, heads: int, size: int):
    """[B,S,heads*size] -> [B,heads,S,size]."""
    return op.Transpose(op.Reshape(x, op.Constant(value_ints=[0, 0, heads, size])), perm=[0, 2, 1, 3])


def _merge_heads(op, core, hidden: int):
    """[B,heads,S,size] -> [B,S,hidden]."""
    return op.Reshape(op.Transpose(core, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, hidden]))


def rules(allow_bias: bool = False, excluded: frozenset[int] = frozenset()) -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet(
        [
            cls.rule(allow_bias, excluded)
            for cls in (
                DecomposedSdpa,
                OnnxAttention,
                OnnxAttentionWithPast,
                MicrosoftMultiHeadAttention,
                MicrosoftMultiHeadAttentionWithPast,
                MicrosoftAttention,
            )
        ],
        commute=True,
    )
