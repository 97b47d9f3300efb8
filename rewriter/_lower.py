"""Lowering pass: every canonical Sdpa node becomes one iceformer.KnnAttention node.

Strips HF's GQA head repetition (Unsqueeze(axis 2) -> Expand -> Reshape) so the op receives [B,Hkv,T,D] and
builds one index per KV head; turns a boolean `cond` into the additive form; replaces a mask built from the
model's 2-D attention_mask (padding, optionally causal), or from positions alone (causal), by key_padding_mask
+ is_causal (the mask bypass: the [B,1,S,T] mask subgraph becomes dead and is removed); gives a core whose mask
is a bias (let through by allow_bias) top_k = 0, an exact-only op. Always passes all five inputs (a constant 0 mask, a
[B,T] of ones) so the model-local reference function sees them; the op ignores both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..ops import contract
from . import _canonical, _maskcheck, _masks
from ._attrs import check_head_lists, contract_attr


@dataclass
class LoweredCore:
    name: str
    scale: float
    is_causal: int
    gqa_stripped: bool
    mask: str  # what the core had: "none" | "additive" | "boolean" | "boolean+additive"
    mask_kind: str  # what its additive mask is made of: a _masks.MaskKind value
    bypassed: bool  # the additive mask replaced by key_padding_mask (+ is_causal, + local_window_size)
    layer: int = -1  # position among the attention cores found, in graph order (what --layers selects)
    exact_only: bool = False  # a bias mask (allow_bias): top_k = 0
    window: int = -1  # local_window_size read from the mask (a sliding window); -1: none
    # the bypass's proof: "proven on probes ...", why it was refused (the mask is then kept), or "" (not attempted)
    bypass_check: str = ""


def _const_ints(v: ir.Value | None) -> list[int] | None:
    if v is None or v.const_value is None:
        return None
    return [int(x) for x in np.asarray(v.const_value.numpy()).reshape(-1)]


def _skip_full_slices(v: ir.Value) -> ir.Value:
    """Steps back over Slices that keep everything (starts 0, ends >= 2**62, steps 1): dynamo emits them for
    `x[:, :, None, :, :]` with dynamic shapes."""
    while (node := v.producer()) is not None and node.op_type == "Slice" and len(node.inputs) >= 3:
        starts, ends = _const_ints(node.inputs[1]), _const_ints(node.inputs[2])
        steps = _const_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else None
        if (
            starts is None
            or ends is None
            or any(x != 0 for x in starts)
            or any(e < 2**62 for e in ends)
            or (steps is not None and any(x != 1 for x in steps))
        ):
            break
        v = node.inputs[0]
    return v


def strip_head_repeat(v: ir.Value) -> ir.Value | None:
    """The [B,Hkv,T,D] source of HF's repeat_kv (Reshape(Expand(Unsqueeze(src, [2]), .), .)), else None."""
    reshape = v.producer()
    if reshape is None or reshape.op_type != "Reshape" or reshape.domain not in ("", "ai.onnx"):
        return None
    expand = reshape.inputs[0].producer() if reshape.inputs[0] is not None else None
    if expand is None or expand.op_type != "Expand":
        return None
    src = _skip_full_slices(expand.inputs[0]) if expand.inputs[0] is not None else None
    unsq = src.producer() if src is not None else None
    if unsq is None or unsq.op_type != "Unsqueeze":
        return None
    axes = _const_ints(unsq.inputs[1]) if len(unsq.inputs) > 1 else None
    if axes is None and "axes" in unsq.attributes:
        axes = list(unsq.attributes["axes"].value)
    return unsq.inputs[0] if axes == [2] else None


def _constant(graph: ir.Graph, before: ir.Node, name: str, array: np.ndarray) -> ir.Value:
    node = ir.Node(
        "", "Constant", [], {"value": ir.AttrTensor("value", ir.tensor(array, name=name))}, name=name, num_outputs=1
    )
    node.outputs[0].name = name
    graph.insert_before(before, node)
    return node.outputs[0]


def _ones_like_keys(graph: ir.Graph, before: ir.Node, k: ir.Value, base: str) -> ir.Value:
    """An int64 [B,T] tensor of ones (every key real) from K's shape: the reference function's 5th input."""
    # Shape + Gather rather than Shape(start, end): valid at every opset the exporters write (Shape's start/end
    # attributes need opset 15).
    shape = ir.Node("", "Shape", [k], num_outputs=1, name=f"{base}_kpm_kshape")
    bt = _constant(graph, before, f"{base}_kpm_axes", np.array([0, 2], np.int64))
    gather = ir.Node(
        "", "Gather", [shape.outputs[0], bt], {"axis": ir.AttrInt64("axis", 0)}, num_outputs=1, name=f"{base}_kpm_shape"
    )
    ones = ir.Node(
        "",
        "ConstantOfShape",
        [gather.outputs[0]],
        {"value": ir.AttrTensor("value", ir.tensor(np.ones([1], np.int64)))},
        num_outputs=1,
        name=f"{base}_kpm_ones",
    )
    for node in (shape, gather, ones):
        node.outputs[0].name = node.name
        graph.insert_before(before, node)
    return ones.outputs[0]


def lower_graph(
    graph: ir.Graph,
    attrs: dict,
    counter: list[int],
    checker: _maskcheck.MaskChecker,
    mask_bypass: bool = True,
    causal: str = "auto",
) -> list[LoweredCore]:
    """Lowers the canonical nodes of `graph` and of its subgraphs in place, in graph order; returns what it did.

    causal: "auto" reads causality from the mask's construction; "on" sets is_causal on every core; "off"
    never infers it (a padding+causal mask is then kept as a tensor)."""
    done: list[LoweredCore] = []
    for node in list(graph):  # one walk in graph order, into If/Loop/Scan bodies where they stand
        if node.domain == _canonical.DOMAIN and node.op_type == _canonical.OP:
            done.append(_lower_node(graph, node, attrs, counter, checker, mask_bypass, causal))
            continue
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                done += lower_graph(attr.value, attrs, counter, checker, mask_bypass, causal)
            elif attr.type == ir.AttributeType.GRAPHS:
                for sub in attr.value:
                    done += lower_graph(sub, attrs, counter, checker, mask_bypass, causal)
    return done


@dataclass(frozen=True)
class _MaskPlan:
    """How a core's mask is lowered: what it is made of, whether it is bypassed (proven), and what the op's
    attributes become."""

    mask: _masks.MaskFacts | None  # None: the core has no mask
    bypass: bool
    is_causal: int
    window: int
    check: str  # the bypass proof or why it was refused ("" when not attempted)


def _plan_mask(
    graph: ir.Graph,
    node: ir.Node,
    mask: ir.Value | None,
    checker: _maskcheck.MaskChecker,
    mask_bypass: bool,
    causal: str,
) -> _MaskPlan:
    """Classify the additive mask; a padding (+ causal) mask is bypassed only when the probes prove it equal to
    key_padding_mask + is_causal (+ local_window_size); anything else keeps its mask (exact and correct)."""
    mk = _masks.classify(mask, graph) if mask is not None else None
    bypassable = _masks.BYPASSABLE if causal != "off" else (_masks.MaskKind.PADDING,)
    bypass = mask_bypass and mk is not None and mk.kind in bypassable
    node_causal = node.attributes.get_int("is_causal", 0)
    is_causal = 1 if causal == "on" else node_causal
    window, check = -1, ""
    if bypass:
        verdict = checker.check(mask, mk.padding_input, node_causal, causal)
        bypass, check = verdict.ok, verdict.reason
        if verdict.ok:
            is_causal, window = max(is_causal, verdict.is_causal), verdict.window
    return _MaskPlan(mk, bypass, is_causal, window, check)


def _new_value(graph: ir.Graph, before: ir.Node, op: str, inputs: list, name: str, **attrs) -> ir.Value:
    """One standard-domain node inserted before `before`; its output, named `name`."""
    attributes = {k: ir.AttrInt64(k, v) if isinstance(v, int) else v for k, v in attrs.items()}
    node = ir.Node("", op, inputs, attributes, num_outputs=1, name=name)
    graph.insert_before(before, node)
    node.outputs[0].name = name
    return node.outputs[0]


def _op_mask(
    graph: ir.Graph, node: ir.Node, base: str, cond: ir.Value | None, mask: ir.Value | None, bypass: bool
) -> tuple[ir.Value, str]:
    """The op's float attn_mask input and what the core had ("none" | "additive" | "boolean" |
    "boolean+additive"): a boolean `cond` becomes 0 / -inf, added to the additive mask unless that is bypassed;
    nothing left becomes the no-mask placeholder (contract.NO_MASK_VALUE)."""
    kept = None if bypass else mask
    kind = "additive" if mask is not None else "none"
    if cond is not None:
        zero = _constant(graph, node, f"{base}_mask_zero", np.array(0.0, np.float32))
        ninf = _constant(graph, node, f"{base}_mask_ninf", np.array(-np.inf, np.float32))
        cond_f = _new_value(graph, node, "Where", [cond, zero, ninf], f"{base}_mask_from_bool")
        kind = "boolean+additive" if mask is not None else "boolean"
        kept = cond_f if kept is None else _new_value(graph, node, "Add", [cond_f, kept], f"{base}_mask_sum")
    if kept is None:
        return _constant(graph, node, f"{base}_no_mask", np.full([1], contract.NO_MASK_VALUE, np.float32)), kind
    if kept.dtype is not None and kept.dtype != ir.DataType.FLOAT:
        kept = _new_value(graph, node, "Cast", [kept], f"{base}_mask_f32", to=int(ir.DataType.FLOAT))
    return kept, kind


def _op_key_padding(graph: ir.Graph, node: ir.Node, base: str, plan: _MaskPlan, k: ir.Value) -> ir.Value:
    """key_padding_mask: the model's 2-D attention_mask (int64) when the bypass reads one, else [B,T] ones."""
    kpm = plan.mask.padding_input if plan.bypass and plan.mask is not None else None
    if kpm is None:
        return _ones_like_keys(graph, node, k, base)
    if kpm.dtype != ir.DataType.INT64:
        kpm = _new_value(graph, node, "Cast", [kpm], f"{base}_kpm_i64", to=int(ir.DataType.INT64))
    return kpm


def _replace_output(graph: ir.Graph, out: ir.Value, y: ir.Value) -> None:
    """Every use of `out` reads `y` instead; a graph output keeps its name (the old value is renamed away)."""
    if out.is_graph_output():
        old_name = out.name
        out.name = f"{old_name}_replaced"
        y.name = old_name
        outputs = graph.outputs
        outputs[outputs.index(out)] = y
    out.replace_all_uses_with(y)


def _lower_node(
    graph: ir.Graph,
    node: ir.Node,
    attrs: dict,
    counter: list[int],
    checker: _maskcheck.MaskChecker,
    mask_bypass: bool,
    causal: str,
) -> LoweredCore:
    q, k, v, cond, mask = (list(node.inputs) + [None] * 5)[:5]
    k_src, v_src = strip_head_repeat(k), strip_head_repeat(v)
    stripped = k_src is not None and v_src is not None
    if stripped:
        k, v = k_src, v_src
    out = node.outputs[0]
    base = (out.name or f"attention_{counter[0]}").replace("/", "_").strip("_")
    counter[0] += 1
    plan = _plan_mask(graph, node, mask, checker, mask_bypass, causal)
    exact_only = plan.mask is not None and plan.mask.kind == _masks.MaskKind.BIAS
    kpm = _op_key_padding(graph, node, base, plan, k)
    op_mask, kind = _op_mask(graph, node, base, cond, mask, plan.bypass)
    scale = node.attributes.get_float("scale")
    # scale, is_causal and local_window_size always set: the reference function reads them.
    op_attrs = {
        "scale": ir.AttrFloat32("scale", scale),
        "is_causal": ir.AttrInt64("is_causal", plan.is_causal),
        "local_window_size": ir.AttrInt64("local_window_size", plan.window),
    }
    heads = q.shape[1] if q.shape is not None and len(q.shape) == 4 else None
    check_head_lists(attrs, heads if isinstance(heads, int) else None, f"attention {base!r}")
    for name, value in {**attrs, **({"top_k": 0} if exact_only else {})}.items():
        op_attrs[name] = contract_attr(contract.attribute(name), value)
    new = ir.Node(
        contract.DOMAIN, contract.OP_TYPE, [q, k, v, op_mask, kpm], op_attrs, name=f"{base}_KnnAttention", num_outputs=1
    )
    new.metadata_props[_canonical.LAYER_TAG] = node.metadata_props.get(_canonical.LAYER_TAG, "-1")
    graph.insert_before(node, new)
    y = new.outputs[0]
    y.name = f"{base}_knn"
    y.shape, y.type = out.shape, out.type
    if y.shape is None and q.shape is not None and v.shape is not None and q.shape.rank() == v.shape.rank() == 4:
        y.shape = ir.Shape([q.shape[0], q.shape[1], q.shape[2], v.shape[3]])  # [B,Hq,S,Dv]
    if y.type is None:
        y.type = q.type
    _replace_output(graph, out, y)
    graph.remove(node, safe=True)
    return LoweredCore(
        new.name,
        scale,
        plan.is_causal,
        stripped,
        kind,
        (plan.mask.kind if plan.mask else _masks.MaskKind.NONE).value,
        plan.bypass,
        layer=int(new.metadata_props[_canonical.LAYER_TAG]),
        exact_only=exact_only,
        window=plan.window,
        bypass_check=plan.check,
    )
