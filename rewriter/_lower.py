"""Lowering pass: every canonical Sdpa node becomes one iceformer.KnnAttention node.

Strips HF's GQA head repetition (Unsqueeze(axis 2) -> Expand -> Reshape) so the op receives [B,Hkv,T,D] and
builds one index per KV head; turns a boolean `cond` into the additive form; passes a constant 0 mask when
there is none (so the model-local reference function always sees four inputs; the op ignores a 1-element zero
mask).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ..ops import contract
from . import _canonical


@dataclass
class LoweredCore:
    name: str
    scale: float
    is_causal: int
    gqa_stripped: bool
    mask: str  # "none" | "additive" | "boolean" | "boolean+additive"


def _const_ints(v: ir.Value | None) -> list[int] | None:
    if v is None or v.const_value is None:
        return None
    return [int(x) for x in np.asarray(v.const_value.numpy()).reshape(-1)]


def strip_head_repeat(v: ir.Value) -> ir.Value | None:
    """The [B,Hkv,T,D] source of HF's repeat_kv (Reshape(Expand(Unsqueeze(src, [2]), .), .)), else None."""
    reshape = v.producer()
    if reshape is None or reshape.op_type != "Reshape" or reshape.domain not in ("", "ai.onnx"):
        return None
    expand = reshape.inputs[0].producer() if reshape.inputs[0] is not None else None
    if expand is None or expand.op_type != "Expand":
        return None
    unsq = expand.inputs[0].producer() if expand.inputs[0] is not None else None
    if unsq is None or unsq.op_type != "Unsqueeze":
        return None
    axes = _const_ints(unsq.inputs[1]) if len(unsq.inputs) > 1 else None
    if axes is None and "axes" in unsq.attributes:
        axes = list(unsq.attributes["axes"].value)
    return unsq.inputs[0] if axes == [2] else None


def _constant(graph: ir.Graph, before: ir.Node, name: str, array: np.ndarray) -> ir.Value:
    node = ir.Node("", "Constant", [], {"value": ir.AttrTensor("value", ir.tensor(array, name=name))}, name=name,
                   num_outputs=1)
    node.outputs[0].name = name
    graph.insert_before(before, node)
    return node.outputs[0]


def lower_graph(graph: ir.Graph, attrs: dict, counter: list[int]) -> list[LoweredCore]:
    """Lowers the canonical nodes of `graph` (not its subgraphs) in place; returns what it did."""
    done: list[LoweredCore] = []
    for node in list(graph):
        if node.domain != _canonical.DOMAIN or node.op_type != _canonical.OP:
            continue
        q, k, v, cond, mask = (list(node.inputs) + [None] * 5)[:5]
        k_src, v_src = strip_head_repeat(k), strip_head_repeat(v)
        stripped = k_src is not None and v_src is not None
        if stripped:
            k, v = k_src, v_src
        out = node.outputs[0]
        base = (out.name or f"attention_{counter[0]}").replace("/", "_").strip("_")
        counter[0] += 1
        kind = "none"
        if cond is not None:
            zero = _constant(graph, node, f"{base}_mask_zero", np.array(0.0, np.float32))
            ninf = _constant(graph, node, f"{base}_mask_ninf", np.array(-np.inf, np.float32))
            where = ir.Node("", "Where", [cond, zero, ninf], name=f"{base}_mask_from_bool", num_outputs=1)
            graph.insert_before(node, where)
            cond_f = where.outputs[0]
            cond_f.name = f"{base}_mask_from_bool"
            if mask is not None:
                add = ir.Node("", "Add", [cond_f, mask], name=f"{base}_mask_sum", num_outputs=1)
                graph.insert_before(node, add)
                mask = add.outputs[0]
                mask.name = f"{base}_mask_sum"
                kind = "boolean+additive"
            else:
                mask, kind = cond_f, "boolean"
        elif mask is not None:
            kind = "additive"
        if mask is None:
            mask = _constant(graph, node, f"{base}_no_mask", np.zeros([1], np.float32))
        elif mask.dtype is not None and mask.dtype != ir.DataType.FLOAT:
            cast = ir.Node("", "Cast", [mask], {"to": ir.AttrInt64("to", ir.DataType.FLOAT)}, name=f"{base}_mask_f32",
                           num_outputs=1)
            graph.insert_before(node, cast)
            mask = cast.outputs[0]
            mask.name = f"{base}_mask_f32"
        scale = node.attributes.get_float("scale")
        is_causal = node.attributes.get_int("is_causal", 0)
        op_attrs = {"scale": ir.AttrFloat32("scale", scale)}
        if is_causal:
            op_attrs["is_causal"] = ir.AttrInt64("is_causal", 1)
        for name, value in attrs.items():
            spec = contract.attribute(name)
            op_attrs[name] = ir.AttrInt64(name, int(value)) if spec.type == "int" else ir.AttrFloat32(name, float(value))
        new = ir.Node(contract.DOMAIN, contract.OP_TYPE, [q, k, v, mask], op_attrs, name=f"{base}_KnnAttention",
                      num_outputs=1)
        graph.insert_before(node, new)
        y = new.outputs[0]
        y.name = f"{base}_knn"
        y.shape, y.type = out.shape, out.type
        if out.is_graph_output():
            # Keep the graph output's name: rename the old value away first.
            old_name = out.name
            out.name = f"{old_name}_replaced"
            y.name = old_name
            outputs = graph.outputs
            outputs[outputs.index(out)] = y
        out.replace_all_uses_with(y)
        graph.remove(node, safe=True)
        done.append(LoweredCore(new.name, scale, is_causal, stripped, kind))
    return done
