"""com.microsoft.GroupQueryAttention nodes (onnxruntime-genai's decoder layers) become
iceformer.GroupQueryAttention with the same inputs, outputs and attributes plus the k-NN attributes.

The two ops share the contract (ops/contract.py: GQA_*), so the node keeps its KV-cache wiring, rotary and window;
a node using what ours refuses (inputs from position_ids on, output_qk, smooth_softmax, qk_output, a window-sized
cache) is left as it was and reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from ..ops import contract
from ._attrs import check_head_lists, contract_attr

MS_DOMAIN = "com.microsoft"
# ORT's attributes that ours does not take; a node may carry them only at their "off" values (quantized KV cache
# off, no QK norm), and the switch drops them.
ORT_ONLY_ATTRIBUTES = (
    "kv_cache_bit_width",
    "k_quant_type",
    "v_quant_type",
    "qk_norm_epsilon",
    "q_norm_epsilon",
    "k_norm_epsilon",
)


@dataclass(frozen=True)
class GqaNode:
    node: ir.Node
    reason: str  # "" when it can be rewritten


def _why_not(node: ir.Node) -> str:
    extra = [
        contract.GQA_REFUSED_INPUTS[i - len(contract.GQA_INPUTS)]
        for i, v in enumerate(node.inputs)
        if i >= len(contract.GQA_INPUTS) and v is not None
    ]
    if extra:
        return f"input {extra[0]} is not supported"
    if len(node.outputs) > 3 and node.outputs[3] is not None and node.outputs[3].uses():
        return "output output_qk is used"
    for name in ("smooth_softmax", "qk_output", "sliding_window_cache"):
        if node.attributes.get_int(name, 0) != 0:
            return f"{name} is set"
    for name in ("k_quant_type", "v_quant_type"):
        if node.attributes.get_string(name, "NONE") not in ("NONE", ""):
            return f"{name} is set (quantized KV cache)"
    for name in [a for a in node.attributes if a not in {s.name for s in contract.GQA_ATTRIBUTES}]:
        if name not in ORT_ONLY_ATTRIBUTES:
            return f"attribute {name} is not known"
    return ""


def find(model: ir.Model) -> list[GqaNode]:
    """Every com.microsoft.GroupQueryAttention node, in graph order (subgraphs included), with why it cannot be
    rewritten ("" when it can)."""
    return [
        GqaNode(n, _why_not(n))
        for n in ir.traversal.RecursiveGraphIterator(model.graph)
        if n.domain == MS_DOMAIN and n.op_type == "GroupQueryAttention"
    ]


def switch(model: ir.Model, nodes: list[ir.Node], attributes: dict) -> None:
    """Switches `nodes` to iceformer.GroupQueryAttention and sets `attributes` (k-NN settings) on them."""
    for node in nodes:
        check_head_lists(attributes, node.attributes.get_int("num_heads"), f"node {node.name!r}")
    for node in nodes:
        node.domain = contract.DOMAIN
        for name in ORT_ONLY_ATTRIBUTES:
            node.attributes.pop(name, None)  # at their "off" values (checked by find)
        for name, value in attributes.items():
            node.attributes[name] = contract_attr(contract.gqa_attribute(name), value)
    if nodes:
        model.opset_imports[contract.DOMAIN] = contract.VERSION
