"""What an attention mask is made of, read from its producer cone (never walking into Shape cones).

A mask built by Hugging Face from the model's 2-D `attention_mask` input (padding), optionally combined with a
causal comparison of two Range-derived position tensors, is `padding` or `padding+causal`: the op can take the
[B,T] input as key_padding_mask (and is_causal=1) instead of the O(S*T) tensor; a mask built from positions
alone is `causal` (is_causal=1, no key_padding_mask). Anything that reads a float
table of more than one element (T5 relative positions, ALiBi slopes) is a `bias`; other masks are `other`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import onnx_ir as ir

_COMPARE = {"LessOrEqual", "Less", "GreaterOrEqual", "Greater"}
_MAX_NODES = 400


class MaskKind(str, Enum):
    """What an additive mask is made of (a str: the report and its JSON show the value)."""

    NONE = "none"  # no mask
    PADDING = "padding"  # from the model's 2-D attention_mask only
    PADDING_CAUSAL = "padding+causal"  # that, and positions compared
    CAUSAL = "causal"  # positions compared, no input read
    BIAS = "bias"  # reads a float table (relative positions, ALiBi): top-k cannot honour it
    OTHER = "other"


BYPASSABLE = (
    MaskKind.PADDING,
    MaskKind.PADDING_CAUSAL,
    MaskKind.CAUSAL,
)  # what key_padding_mask + is_causal can express


@dataclass(frozen=True)
class MaskFacts:
    """What classify() found: the kind, and for padding kinds the model's 2-D attention_mask input."""

    kind: MaskKind
    padding_input: ir.Value | None = None


def _has_range_ancestor(v: ir.Value, depth: int = 12) -> bool:
    node = v.producer()
    if node is None or depth == 0 or node.op_type == "Shape":
        return False
    if node.op_type == "Range":
        return True
    return any(i is not None and _has_range_ancestor(i, depth - 1) for i in node.inputs)


def classify(mask: ir.Value, graph: ir.Graph) -> MaskFacts:
    inputs = {v.name: v for v in graph.inputs}
    seen: set[int] = set()
    stack = [mask]
    reached: list[ir.Value] = []
    causal = False
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if len(seen) > _MAX_NODES:
            return MaskFacts(MaskKind.OTHER)
        if v.name in inputs and inputs[v.name] is v:
            reached.append(v)
            continue
        if v.const_value is not None:
            arr = v.const_value
            if (
                arr.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
                and np.prod(arr.shape.numpy()) > 1
            ):
                return MaskFacts(MaskKind.BIAS)
            continue
        node = v.producer()
        if node is None or node.op_type == "Shape":
            continue  # sizes, not values
        if node.op_type in _COMPARE and all(i is not None and _has_range_ancestor(i) for i in node.inputs):
            causal = True
        if node.op_type == "Trilu":
            causal = True
        for i in node.inputs:
            if i is not None:
                stack.append(i)
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.TENSOR:
                t = attr.value
                if t.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16) and np.prod(t.shape.numpy()) > 1:
                    return MaskFacts(MaskKind.BIAS)
    padding = [
        v
        for v in reached
        if v.shape is not None
        and v.shape.rank() == 2
        and v.dtype in (ir.DataType.INT64, ir.DataType.INT32, ir.DataType.BOOL)
    ]
    if len(padding) == 1 and len(reached) == 1:
        return MaskFacts(MaskKind.PADDING_CAUSAL if causal else MaskKind.PADDING, padding[0])
    if causal and not reached:  # built from positions alone (a decoder without its own attention_mask input)
        return MaskFacts(MaskKind.CAUSAL)
    return MaskFacts(MaskKind.OTHER)
