"""Proof by evaluation that a mask bypass is exact: the mask's producer cone is run on probe inputs and the keys it
leaves visible are compared with what the op will do instead (key_padding_mask, is_causal, local_window_size).

The structural classifier (`_masks.classify`) only says which 2-D input a mask reads and whether positions are
compared; it cannot tell a causal mask from a sliding-window one (Mistral, Gemma 2/3, Qwen2 with windows) or a
prefix-LM, chunked or document mask. Here the cone (every node back to graph inputs and constants, Shape cones
included) becomes a small model that onnxruntime evaluates on probes of batch 3 (no padding, left padding, right
padding), with more new tokens than any integer constant of the cone (the window, if there is one) and a short past
when the model has past inputs. The bypass is accepted only when the visible sets agree on every row the mask leaves
something visible in; a hard window found in the evaluated mask becomes `local_window_size`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import helper

from ..ops import contract
from . import _canonical

MIN_PROBE = 24  # new tokens of the shortest probe
MAX_PROBE = 4608  # longest probe: [3,1,S,T] float masks of ~250 MB
PAST = 3  # cached positions fed to models with past inputs
_MAX_CONE = 5000  # nodes


@dataclass(frozen=True)
class Verdict:
    ok: bool
    is_causal: int = 0
    window: int = -1  # local_window_size; -1: none
    reason: str = ""  # why the bypass is refused, or what was probed


def _cone(mask: ir.Value) -> tuple[list[ir.Node], list[ir.Value], list[ir.Value]] | str:
    """Nodes (topological), graph inputs and constants the mask depends on; a string says why there is no cone."""
    order: list[ir.Node] = []
    inputs: list[ir.Value] = []
    consts: list[ir.Value] = []
    seen_v: set[int] = set()
    seen_n: set[int] = set()
    stack: list[tuple[ir.Value, bool]] = [(mask, False)]
    while stack:  # iterative post-order over producers
        v, expanded = stack.pop()
        node = v.producer()
        if expanded:
            if id(node) not in seen_n:
                seen_n.add(id(node))
                order.append(node)
            continue
        if id(v) in seen_v:
            continue
        seen_v.add(id(v))
        if node is None:
            if v.is_graph_input():
                inputs.append(v)
            elif v.const_value is not None:
                consts.append(v)
            else:
                return f"the mask reads {v.name!r}, which is neither a graph input nor a constant (a subgraph's scope)"
            continue
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            return f"the mask's construction contains control flow ({node.op_type} {node.name!r})"
        if len(seen_v) > _MAX_CONE:
            return f"the mask's construction has more than {_MAX_CONE} values"
        stack.append((v, True))
        stack.extend((i, False) for i in node.inputs if i is not None and id(i) not in seen_v)
    return order, inputs, consts


def _shape_stand_in(node: ir.Node, opset: int) -> list[onnx.NodeProto]:
    """Standard ops giving an attention node's output its shape, [B,Hq,S,Dv] = sum_D(Q) * sum_{B,H,T}(V): a mask
    cone reaches attention (canonical or already lowered) only through Shape, so only the shape matters."""
    q, v, y = node.inputs[0].name, node.inputs[2].name, node.outputs[0].name
    tag = f"{y}__probe"
    if opset >= 18:
        axes = [
            helper.make_node("Constant", [], [f"{tag}_a3"], value=helper.make_tensor(f"{tag}_a3", 7, [1], [3])),
            helper.make_node(
                "Constant", [], [f"{tag}_a012"], value=helper.make_tensor(f"{tag}_a012", 7, [3], [0, 1, 2])
            ),
        ]
        red = [
            helper.make_node("ReduceSum", [q, f"{tag}_a3"], [f"{tag}_q"], keepdims=1),
            helper.make_node("ReduceSum", [v, f"{tag}_a012"], [f"{tag}_v"], keepdims=1),
        ]
    else:
        axes = []
        red = [
            helper.make_node("ReduceMean", [q], [f"{tag}_q"], axes=[3], keepdims=1),
            helper.make_node("ReduceMean", [v], [f"{tag}_v"], axes=[0, 1, 2], keepdims=1),
        ]
    return axes + red + [helper.make_node("Mul", [f"{tag}_q", f"{tag}_v"], [y])]


def _probe_model(mask: ir.Value, nodes, inputs, consts, opsets: dict[str, int]) -> onnx.ModelProto:
    ours = (_canonical.DOMAIN, contract.DOMAIN)
    protos: list[onnx.NodeProto] = []
    for n in nodes:
        protos += _shape_stand_in(n, opsets.get("", 18)) if n.domain in ours else [ir.serde.serialize_node(n)]
    graph = helper.make_graph(
        protos,
        "mask_probe",
        [ir.serde.serialize_value(v) for v in inputs],
        [helper.make_tensor_value_info(mask.name, int(mask.dtype or ir.DataType.FLOAT), None)],
        initializer=[ir.serde.serialize_tensor(v.const_value) for v in consts],
    )
    for v, t in zip(consts, graph.initializer):
        t.name = v.name
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, ver) for d, ver in opsets.items()])
    model.ir_version = 8
    return model


def _window_candidates(nodes: list[ir.Node], consts: list[ir.Value]) -> int:
    """The largest small integer constant of the cone: a window (or chunk) size, if the mask has one."""
    best = 0
    values = [v.const_value for v in consts]
    for n in nodes:
        if n.op_type == "Constant" and "value" in n.attributes:
            values.append(n.attributes["value"].value)
    for t in values:
        if t is None or t.dtype not in (ir.DataType.INT64, ir.DataType.INT32):
            continue
        arr = np.asarray(t.numpy()).reshape(-1)
        if arr.size <= 8:
            small = [abs(int(x)) for x in arr if abs(int(x)) < 1 << 20]
            best = max([best, *small])
    return best


def _dtype(v: ir.Value):
    return {
        ir.DataType.INT64: np.int64,
        ir.DataType.INT32: np.int32,
        ir.DataType.BOOL: np.bool_,
        ir.DataType.FLOAT: np.float32,
        ir.DataType.FLOAT16: np.float16,
    }.get(v.dtype)


def _sym(v: ir.Value, axis: int):
    """The declared size of an axis: an int, a symbol name, or None."""
    if v.shape is None or axis >= v.shape.rank():
        return None
    d = v.shape[axis]
    return d if isinstance(d, int) else (d.value if d.value is not None else None)


def _has_past(inputs: list[ir.Value], padding: ir.Value | None) -> bool:
    """A float rank-4 input whose axis 2 is neither the padding input's key axis nor a token input's axis: a cache."""
    seq = {_sym(padding, 1)} if padding is not None else set()
    seq |= {_sym(v, 1) for v in inputs if v is not padding and v.shape is not None and v.shape.rank() == 2}
    return any(
        v.shape is not None
        and v.shape.rank() == 4
        and v.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16)
        and (_sym(v, 2) is None or _sym(v, 2) not in seq)
        for v in inputs
    )


def _feeds(inputs: list[ir.Value], padding: ir.Value | None, B: int, S: int, P: int) -> dict | str:
    """Probe values per graph input the cone reads, sized by its declared symbols (the padding input's key axis is
    T = P + S, a token input's axis S, an unmatched axis 2 of a rank-4 float input the past P); a string says which
    input has no known role."""
    T = P + S
    size: dict = {}
    if padding is not None:
        size.update({_sym(padding, 0): B, _sym(padding, 1): T})
    for v in inputs:
        if v is not padding and v.shape is not None and v.shape.rank() == 2 and _sym(v, 1) not in size:
            size[_sym(v, 1)] = S
    size.pop(None, None)
    feeds: dict[str, np.ndarray] = {}
    for v in inputs:
        dt = _dtype(v)
        rank = v.shape.rank() if v.shape is not None else None
        if dt is None or rank is None:
            return f"graph input {v.name!r} has no known dtype or rank"

        def dim(axis: int, role: int, v=v) -> int:
            d = _sym(v, axis)
            return d if isinstance(d, int) else size.get(d, role)

        name = (v.name or "").lower()
        if v is padding:
            real = np.ones((dim(0, B), dim(1, T)), bool)
            real[1:2, :2] = False  # left padding (when the batch axis is not fixed at 1)
            real[2:3, real.shape[1] - 2 :] = False  # right padding
            feeds[v.name] = real.astype(dt)
        elif rank == 4 and dt in (np.float32, np.float16):  # past keys / values [B, H, P, D], or Q/K/V themselves
            feeds[v.name] = np.zeros((dim(0, B), dim(1, 1), dim(2, P), dim(3, 8)), dt)
        elif rank == 3 and dt in (np.float32, np.float16):  # inputs_embeds [B, S, hidden]
            feeds[v.name] = np.zeros((dim(0, B), dim(1, S), dim(2, 8)), dt)
        elif rank in (1, 2) and dt in (np.int64, np.int32) and "position" in name:  # positions of the new tokens
            pos = np.arange(P, P + S, dtype=dt)
            feeds[v.name] = pos if rank == 1 else np.broadcast_to(pos, (dim(0, B), S)).copy()
        elif rank == 2 and dt in (np.int64, np.int32):  # token ids, token types
            feeds[v.name] = np.zeros((dim(0, B), dim(1, S)), dt)
        else:
            return f"graph input {v.name!r} (rank {rank}) has no probe value"
    return feeds


def _visible(m: np.ndarray) -> np.ndarray:
    return m.astype(bool) if m.dtype == np.bool_ else m > contract.MASKED_AT_OR_BELOW


def _infer_window(vis: np.ndarray, off: int) -> int | str:
    """The hard window W (keys j > i + off - W) of a [S,T] visibility with no padding, -1 if none; a string when the
    rows disagree (not a sliding window)."""
    S, T = vis.shape
    found: set[int] = set()
    for i in range(S):
        row = np.flatnonzero(vis[i])
        if row.size and row[0] > 0:
            found.add(int(i + off - row[0] + 1))
    if not found:
        return -1
    if len(found) > 1:
        return f"rows start their visible keys at inconsistent offsets (windows {sorted(found)[:4]})"
    return found.pop()


class MaskChecker:
    """Evaluates masks of one model (cached per mask value: all layers of a model usually share one or two)."""

    def __init__(self, model: ir.Model):
        self.opsets = dict(model.opset_imports)
        self.opsets.pop(_canonical.DOMAIN, None)
        self.opsets.pop(contract.DOMAIN, None)
        self._cache: dict[tuple, Verdict] = {}

    def check(self, mask: ir.Value, padding: ir.Value | None, node_causal: int, want_causal: str) -> Verdict:
        """Can `mask` be replaced by key_padding_mask=`padding` (+ is_causal, + local_window_size)?

        node_causal: the core's own is_causal (kept either way); want_causal: "auto" (read from the mask), "on" or
        "off" (the rewriter's --causal)."""
        key = (id(mask), id(padding), node_causal, want_causal)
        if key not in self._cache:
            try:
                self._cache[key] = self._check(mask, padding, node_causal, want_causal)
            except Exception as e:  # an evaluation that fails proves nothing
                self._cache[key] = Verdict(False, reason=f"the mask could not be evaluated ({type(e).__name__}: {e})")
        return self._cache[key]

    def _check(self, mask, padding, node_causal, want_causal) -> Verdict:
        cone = _cone(mask)
        if isinstance(cone, str):
            return Verdict(False, reason=cone)
        nodes, inputs, consts = cone
        if padding is not None and padding not in inputs:
            return Verdict(False, reason=f"the mask does not read {padding.name!r}")
        model = _probe_model(mask, nodes, inputs, consts, self.opsets)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        so.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        window_hint = _window_candidates(nodes, consts)
        if window_hint + 8 > MAX_PROBE:
            return Verdict(
                False,
                reason=f"the mask's construction holds the constant {window_hint}: a window that long "
                f"would not show in probes of up to {MAX_PROBE} tokens, so the bypass cannot be proven",
            )
        probes = sorted({MIN_PROBE, max(MIN_PROBE, window_hint + 8)})
        P = PAST if _has_past(inputs, padding) else 0
        window: int | None = None
        causal: int | None = None
        for S in reversed(probes):  # the longest first: a window shows only in probes longer than it
            feeds = _feeds(inputs, padding, 3, S, P)
            if isinstance(feeds, str):
                return Verdict(False, reason=feeds)
            m = np.asarray(sess.run(None, feeds)[0])
            if m.ndim > 4 or m.ndim < 2:
                return Verdict(False, reason=f"the mask has rank {m.ndim}, expected 2-4")
            if m.dtype != np.bool_ and np.any((m != 0) & (m > contract.MASKED_AT_OR_BELOW)):
                return Verdict(False, reason="the mask holds values other than 0 and 'masked' (a bias)")
            m4 = m.reshape((1,) * (4 - m.ndim) + m.shape)
            heads = _visible(m4)
            if np.any(heads != heads[:, :1]):
                return Verdict(False, reason="the mask differs per head")
            Bm, Sm, Tm = m4.shape[0], m4.shape[2], m4.shape[3]
            Bp = feeds[padding.name].shape[0] if padding is not None else Bm
            vis = np.broadcast_to(heads[:, 0], (Bp, Sm, Tm))
            i = np.arange(Sm)[:, None]
            j = np.arange(Tm)[None, :]
            off = Tm - Sm
            tri = j <= i + off
            if node_causal:
                vis = vis & tri
            c = 1 if (np.all(vis[0] <= tri) and not np.all(vis[0])) or node_causal else 0
            if want_causal == "off" and c and not node_causal:
                return Verdict(False, reason="the mask is causal and --causal off keeps causal masks as tensors")
            if want_causal == "on":
                c = 1
            if window is None:  # read from the longest probe; the shorter ones must agree with it
                w = _infer_window(vis[0], off)
                if isinstance(w, str):
                    return Verdict(False, reason=w)
                causal, window = c, w
            c, w = causal, window
            if Tm != P + S and padding is not None:
                return Verdict(False, reason=f"the mask has {Tm} keys where the padding input has {P + S}")
            expect = np.ones((Bp, Sm, Tm), bool)
            if padding is not None:
                expect &= np.asarray(feeds[padding.name]).astype(bool)[:, None, :]
            if c:
                expect &= tri
            if w >= 0:
                expect &= j > i + off - w
            if Bm == 1 and Bp > 1 and padding is not None:
                return Verdict(False, reason="the mask does not vary with the padding input")
            rows = vis.any(axis=-1)  # rows the mask hides entirely (padding queries) give zeros in the op
            bad = (vis != expect) & rows[..., None]
            if bad.any() or np.any(expect.any(-1) & ~rows):
                b, r, k = np.argwhere(bad)[0] if bad.any() else (*np.argwhere(expect.any(-1) & ~rows)[0], -1)
                return Verdict(
                    False,
                    reason=f"the mask is not padding{' + causal' if c else ''}"
                    f"{f' + window {w}' if w >= 0 else ''}: probe S={S}, batch row {b}, query {r}, key {k}",
                )
        return Verdict(
            True,
            causal or 0,
            window if window is not None else -1,
            f"proven on probes of {probes} new tokens" + (f" after {P} cached" if P else ""),
        )
