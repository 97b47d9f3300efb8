"""Single-node ONNX models: our KnnAttention and ONNX Runtime's dense attention kernels (tests, benchmarks)."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from . import contract

_DTYPE = {"float": TensorProto.FLOAT, "bool": TensorProto.BOOL, "int32": TensorProto.INT32, "int64": TensorProto.INT64}
_SYMS = {"B": "B", "Hq": "Hq", "Hkv": "Hkv", "S": "S", "T": "T", "D": "D", "Dv": "Dv"}


def _value(name: str, dtype: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, _DTYPE[dtype], list(shape) if shape is not None else None)


def make_knn_attention_model(
    *,
    attn_mask: str | None = None,
    attn_mask_rank: int = 4,
    key_padding_mask: str | None = None,
    opset: int = 18,
    unknown_shapes: bool = False,
    **attributes,
) -> onnx.ModelProto:
    """A model with one KnnAttention node. attn_mask / key_padding_mask: None or the dtype of that input.

    unknown_shapes: declare inputs without shapes, so that only the op itself checks them.

    Attributes not given are left absent (the op's defaults apply); unknown names raise KeyError.
    """
    # Values take the contract's type (a float attribute given as 1 is stored as 1.0, not as an int attribute).
    attributes = {name: float(v) if contract.attribute(name).type == "float" else v for name, v in attributes.items()}
    names = ["Q", "K", "V"]
    inputs = [
        _value("Q", "float", ["B", "Hq", "S", "D"]),
        _value("K", "float", ["B", "Hkv", "T", "D"]),
        _value("V", "float", ["B", "Hkv", "T", "Dv"]),
    ]
    if attn_mask is not None:
        names.append("attn_mask")
        inputs.append(_value("attn_mask", attn_mask, None))
    elif key_padding_mask is not None:
        names.append("")
    if key_padding_mask is not None:
        names.append("key_padding_mask")
        inputs.append(_value("key_padding_mask", key_padding_mask, ["B", "T"]))
    if unknown_shapes:
        inputs = [helper.make_tensor_value_info(i.name, i.type.tensor_type.elem_type, None) for i in inputs]
    node = helper.make_node(contract.OP_TYPE, names, ["Y"], domain=contract.DOMAIN, name="knn_attention", **attributes)
    graph = helper.make_graph([node], "knn_attention", inputs, [_value("Y", "float", ["B", "Hq", "S", "Dv"])])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(contract.DOMAIN, contract.VERSION)],
    )
    model.ir_version = 10
    return model


def make_attention_model(
    kind: str,
    *,
    num_heads: int,
    kv_num_heads: int | None = None,
    causal: bool = False,
    scale: float | None = None,
    with_mask: str | None = None,
) -> onnx.ModelProto:
    """ONNX Runtime's dense attention as one node.

    kind "mha": com.microsoft.MultiHeadAttention on [B,S,H*D] inputs (MHA only; causal via unidirectional=1).
    kind "onnx": standard opset-23 Attention on [B,H,S,D] inputs (GQA via kv_num_heads; causal via is_causal,
    top-left aligned when S != T and no past is given).
    """
    kv = kv_num_heads or num_heads
    if kind == "mha":
        if kv != num_heads:
            raise ValueError("MultiHeadAttention needs as many KV heads as query heads")
        attrs = {"num_heads": num_heads}
        if causal:
            attrs["unidirectional"] = 1
        if scale is not None:
            attrs["scale"] = float(scale)
        node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain="com.microsoft", **attrs)
        ins = [_value(n, "float", ["B", s, "HD"]) for n, s in (("q", "S"), ("k", "T"), ("v", "T"))]
        out = _value("y", "float", ["B", "S", "HDv"])
        opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    elif kind == "onnx":
        attrs = {"q_num_heads": num_heads, "kv_num_heads": kv}
        if causal:
            attrs["is_causal"] = 1
        if scale is not None:
            attrs["scale"] = float(scale)
        names = ["q", "k", "v"]
        ins = [
            _value("q", "float", ["B", num_heads, "S", "D"]),
            _value("k", "float", ["B", kv, "T", "D"]),
            _value("v", "float", ["B", kv, "T", "Dv"]),
        ]
        if with_mask is not None:
            names.append("attn_mask")
            ins.append(_value("attn_mask", with_mask, None))
        node = helper.make_node("Attention", names, ["y"], **attrs)
        out = _value("y", "float", ["B", num_heads, "S", "Dv"])
        opsets = [helper.make_opsetid("", 23)]
    else:
        raise ValueError(f"unknown kind {kind!r}: expected 'mha' or 'onnx'")
    graph = helper.make_graph([node], f"dense_{kind}", ins, [out])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model


def make_gqa_model(
    *,
    num_heads: int,
    kv_num_heads: int,
    domain: str = contract.DOMAIN,
    packed: bool = False,
    past: bool = True,
    rotary: bool = False,
    opset: int = 18,
    **attributes,
) -> onnx.ModelProto:
    """One GroupQueryAttention node: ours (domain "iceformer") or ORT's ("com.microsoft"), same inputs and attributes.

    Inputs as genai's builder writes them: query (packed QKV when `packed`), key and value otherwise, past_key /
    past_value when `past`, seqlens_k, total_sequence_length, cos_cache / sin_cache when `rotary`; outputs output,
    present_key, present_value. k-NN attributes are only for our domain.
    """
    names = [
        "query",
        "" if packed else "key",
        "" if packed else "value",
        "past_key" if past else "",
        "past_value" if past else "",
        "seqlens_k",
        "total_sequence_length",
        "cos_cache" if rotary else "",
        "sin_cache" if rotary else "",
    ]
    while names[-1] == "":
        names.pop()
    if domain == contract.DOMAIN:  # float attributes as floats (the contract's types)
        attributes = {k: float(v) if contract.gqa_attribute(k).type == "float" else v for k, v in attributes.items()}
    node = helper.make_node(
        "GroupQueryAttention",
        names,
        ["output", "present_key", "present_value"],
        domain=domain,
        name="gqa",
        num_heads=num_heads,
        kv_num_heads=kv_num_heads,
        do_rotary=int(rotary),
        **attributes,
    )
    ints = ("seqlens_k", "total_sequence_length")
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT32 if n in ints else TensorProto.FLOAT, None)
        for n in names
        if n
    ]
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("output", "present_key", "present_value")
    ]
    graph = helper.make_graph([node], "gqa", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(domain, 1)])
    model.ir_version = 10
    return model
