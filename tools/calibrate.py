"""ice-calibrate: per-layer k-NN settings for a rewritten decoder, chosen on its own activations.

Runs the rewritten model once on N tokens of Brown Corpus text, keeps each core's inputs (KnnAttention, or in an
onnxruntime-genai folder GroupQueryAttention, the decoder run from an empty past), and times
candidate settings of that core against its exact path (top_k = 0) on them. Each core gets the fastest candidate
whose mean relative output error (rows that may take the k-NN path, all heads) is within --budget and which is
faster than exact; a core where none is gets top_k = 0 (exact). Attention that is diffuse in some layers and peaked
in others (Qwen2.5-Coder at 16k: the defaults leave 1.7-1.9% error in layers 2 and 12 and 3.6% in layer 22) then
gets dense, more samples or the defaults where each suffices.

Per head (on unless --no-per-head), one more candidate per core: a setting per query head (head_budgets /
head_tail_samples / head_windows). The core runs once per rung of LADDER (streaming windows, then retrieval budgets)
with every head at that rung; each head gets the cheapest rung whose error on that head is within --budget (else
the head is exact), and the routed setting is timed and checked like the others. On Qwen2.5-Coder at 16k it won on
every core (docs/decisions.md).

  ice-calibrate model.knn.onnx model.cal.onnx --model qwen2.5-coder-0.5b --tokens 16384 --budget 0.02
  ice-calibrate qwen-genai-ice qwen-genai-cal --model qwen2.5-coder-0.5b --tokens 16384   # a rewritten genai folder

The output is the input with the chosen attributes on each core (a file, or a new folder for a folder; written
atomically, never over the input); the
report (--json) lists every candidate tried per core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx_ir.passes.common import RemoveUnusedNodesPass
from rich.console import Console
from rich.table import Table

from ..metrics import eligible_rows, feeds, relative_error, text_ids, tokenizer
from ..ops import contract, session_options
from ..rewriter import RewriteError, apply_settings, decoder_path, knn_cores, no_cores

# Candidate settings, cheapest first, on top of the core's own attributes. More tail samples lower the variance of
# the estimate of the unretrieved keys' mass (error ~ 1/sqrt(samples) on SmolLM2 and Qwen); a lower tail_limit sends
# rows whose estimate says much mass lies outside the retrieved set to the exact path. (Cheaper candidates than the
# defaults were tried and measured no faster end to end, with less agreement: docs/decisions.md.)
CANDIDATES: tuple[dict, ...] = (
    {},
    {"tail_samples": 2048},
    {"tail_samples": 2048, "tail_limit": 0.3},
    {"tail_samples": 4096, "tail_limit": 0.15},
)


@dataclass(frozen=True)
class Rung:
    """One per-head setting: a streaming head (window > 0: its sinks and the window's keys, nothing retrieved) or a
    retrieval budget with its tail sample."""

    budget: int = 0
    tail_samples: int = 0
    window: int = 0

    def attrs(self, Hq: int) -> dict:
        """Every query head at this rung (for a retrieval rung, the scalar settings it stands for)."""
        if self.window > 0:
            return {"head_windows": [self.window] * Hq}
        return {
            "top_k": self.budget,
            "max_candidates": self.budget,
            "candidate_fraction": 0.0,
            "tail_samples": self.tail_samples,
        }


# --per-head: rungs, cheapest first: streaming windows (a window costs its keys and no scan: cheaper than the
# smallest retrieval rung at 8k-16k; docs/decisions.md), then (budget, tail samples) as ice-sim-knn --route
# simulated. Each head gets the cheapest rung within the budget on its own rows, else exact.
LADDER: tuple[Rung, ...] = (
    Rung(window=1024),
    Rung(window=2048),
    Rung(64, 256),
    Rung(128, 256),
    Rung(128, 512),
    Rung(256, 512),
    Rung(256, 1024),
    Rung(512, 1024),
    Rung(512, 2048),
)
DECODERS = ("smollm2", "qwen2.5-coder-0.5b")
TEXT_START = 200  # calibration text: Brown samples from 200 on (ice-main and ice-eval evaluate on samples from 100)


@dataclass
class Trial:
    attrs: dict
    ms: float
    error: float  # mean relative output error over k-NN-eligible rows
    worst_head: float


@dataclass
class HeadRoute:
    """--per-head: each rung's error per query head (rows that may take the k-NN path), and the rung each head got."""

    ladder: list[Rung]
    errors: list[list[float]]  # [rung][head]
    budgets: list[int]  # per head, 0: exact (or streaming)
    tail_samples: list[int]
    windows: list[int]  # per head, > 0: a streaming head

    def attrs(self) -> dict:
        """The routed setting as the op's per-head lists."""
        return {"head_budgets": self.budgets, "head_tail_samples": self.tail_samples, "head_windows": self.windows}


@dataclass
class CoreResult:
    core: int
    node: str
    exact_ms: float
    chosen: dict  # attributes written to the core
    ms: float
    error: float
    trials: list[Trial] = field(default_factory=list)
    route: HeadRoute | None = None


@dataclass
class CalibrationReport:
    input: str
    output: str
    tokens: int
    budget: float
    cores: list[CoreResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _missing_inputs(model: onnx.ModelProto, have: set[str]) -> dict[str, np.ndarray]:
    """Empty tensors for the graph inputs a prompt does not give (a genai decoder's past_key_values.*): batch 1, every
    other named dimension 0 (no past), fixed dimensions kept."""
    out = {}
    for v in model.graph.input:
        if v.name in have:
            continue
        dims = v.type.tensor_type.shape.dim
        shape = [1 if i == 0 else d.dim_value if d.HasField("dim_value") else 0 for i, d in enumerate(dims)]
        out[v.name] = np.zeros(shape, onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
    return out


def _prune_to(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """`model` computing only `names` (its outputs): onnx-ir's dead-code pass drops the nodes and initializers they do
    not need (a decoder's last layers and logits; logits alone are S x vocab floats). External weights stay external."""
    m = ir.from_proto(model)
    values = {**m.graph.initializers, **{v.name: v for v in m.graph.inputs}}
    values.update({v.name: v for node in m.graph for v in node.outputs})
    m.graph.outputs.clear()
    m.graph.outputs.extend(values[n] for n in names)
    RemoveUnusedNodesPass()(m)
    return ir.to_proto(m)


def capture_core_inputs(path: Path, inputs: dict[str, np.ndarray], threads: int):
    """(core nodes, per core a dict of its input tensors) from one run of the model at `path` (a file, or a model
    folder: its decoder, a genai one run from an empty past) on `inputs`."""
    path = decoder_path(path)
    model = onnx.load(str(path), load_external_data=False)
    cores = knn_cores(model)
    if not cores:
        raise no_cores(path)
    inputs = {**inputs, **_missing_inputs(model, set(inputs))}
    types = _elem_types(model)
    wanted = [name for node in cores for name in node.input if name and name not in inputs]
    wanted = list(dict.fromkeys(wanted))
    have = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in have:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(name, types.get(name) or onnx.TensorProto.FLOAT, None)
            )
    model = _prune_to(model, wanted)
    # Beside the input: its external weights are referenced relative to the model's folder.
    tmp = path.parent / f".ice-calibrate-{os.getpid()}.onnx"
    try:
        onnx.save(model, str(tmp))
        sess = ort.InferenceSession(str(tmp), session_options(threads), providers=["CPUExecutionProvider"])
        feed = {i.name: inputs[i.name] for i in sess.get_inputs()}
        values = dict(zip(wanted, sess.run(wanted, feed)))
    finally:
        tmp.unlink(missing_ok=True)
    values.update(inputs)
    return cores, [{name: values[name] for name in node.input if name} for node in cores]


@dataclass(frozen=True)
class CoreDims:
    """What the error measure needs of a core: Hq, S query rows, T keys, causal."""

    Hq: int
    S: int
    T: int
    causal: bool


def _attrs(node: onnx.NodeProto) -> dict:
    """The node's own attributes as Python values."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def core_dims(node: onnx.NodeProto, tensors: dict) -> CoreDims:
    own = _attrs(node)
    if node.op_type == contract.GQA_OP_TYPE:  # query [B, S, Hq D] (or packed QKV); causal, T = past + S
        total = int(np.asarray(tensors[node.input[6]]).reshape(-1)[0])
        return CoreDims(int(own["num_heads"]), tensors[node.input[0]].shape[1], total, True)
    Q, K = tensors[node.input[0]], tensors[node.input[1]]
    return CoreDims(Q.shape[1], Q.shape[2], K.shape[2], bool(own.get("is_causal", 0)))


def _heads(node: onnx.NodeProto, y: np.ndarray, Hq: int) -> np.ndarray:
    """The core's output as [B, Hq, S, Dv] (GroupQueryAttention's is [B, S, Hq Dv])."""
    if node.op_type == contract.GQA_OP_TYPE:
        return y.reshape(y.shape[0], y.shape[1], Hq, -1).transpose(0, 2, 1, 3)
    return y


def _core_session(node: onnx.NodeProto, tensors: dict[str, np.ndarray], attrs: dict, threads: int):
    """The core alone (same inputs and attributes, `attrs` on top) as a one-node model; its first output is Y."""
    base = {**_attrs(node), **attrs}
    ins = [
        onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(tensors[n].dtype), tensors[n].shape)
        for n in dict.fromkeys(node.input)
        if n
    ]
    outs = ["Y", *(f"Y{i}" if o else "" for i, o in enumerate(node.output) if i > 0)]
    core = onnx.helper.make_node(node.op_type, list(node.input), outs, domain=node.domain, **base)
    graph = onnx.helper.make_graph(
        [core], "core", ins, [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outs if o]
    )
    m = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid("", 18), onnx.helper.make_opsetid(contract.DOMAIN, contract.VERSION)],
    )
    return ort.InferenceSession(m.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])


def _run(node: onnx.NodeProto, tensors: dict, attrs: dict, threads: int, reps: int) -> tuple[np.ndarray, float]:
    """(output as [B, Hq, S, Dv], median ms of `reps` timed runs; reps 0: one untimed run). The output is the first
    run's and that run is timed too: a separate warm-up run cost a quarter of a calibration, and a session's first
    run of a core measured within 5% of its second at 16k (docs/decisions.md)."""
    sess = _core_session(node, tensors, attrs, threads)
    y, ts = None, []
    for _ in range(max(reps, 1)):
        t0 = time.perf_counter()
        out = sess.run(["Y"], tensors)[0]
        ts.append((time.perf_counter() - t0) * 1e3)
        y = out if y is None else y
    return _heads(node, y, core_dims(node, tensors).Hq), statistics.median(ts) if reps > 0 else 0.0


def _error(node: onnx.NodeProto, tensors: dict, attrs: dict, y: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(mean, worst head's) relative error of y against ref over the rows that may take the k-NN path."""
    d = core_dims(node, tensors)
    return relative_error(y, ref, eligible_rows(d.S, d.T, d.causal, {**_attrs(node), **attrs}))


def calibrate_core(
    index: int,
    node: onnx.NodeProto,
    tensors: dict,
    budget: float,
    threads: int,
    reps: int,
    candidates=CANDIDATES,
    overrides: dict | None = None,
    per_head: bool = False,
) -> CoreResult:
    overrides = overrides or {}
    ref, exact_ms = _run(node, tensors, {"top_k": 0}, threads, reps)
    result = CoreResult(index, node.name, exact_ms, {"top_k": 0}, exact_ms, 0.0)
    tried: list[dict] = []
    for cand in candidates:
        attrs = {**cand, **overrides}  # what the user set for every core wins over a candidate
        if attrs in tried:
            continue
        tried.append(attrs)
        y, ms = _run(node, tensors, attrs, threads, reps)
        result.trials.append(Trial(attrs, ms, *_error(node, tensors, attrs, y, ref)))
    if per_head:
        result.route = route_heads(node, tensors, ref, budget, threads, overrides)
        if any(result.route.budgets) or any(result.route.windows):  # else every head exact: the exact path itself
            attrs = {**result.route.attrs(), **overrides}
            y, ms = _run(node, tensors, attrs, threads, reps)
            result.trials.append(Trial(attrs, ms, *_error(node, tensors, attrs, y, ref)))
    fits = [t for t in result.trials if t.error <= budget and t.ms < exact_ms]
    if fits:
        best = min(fits, key=lambda t: t.ms)
        result.chosen, result.ms, result.error = dict(best.attrs), best.ms, best.error
    return result


def route_heads(
    node: onnx.NodeProto, tensors: dict, ref: np.ndarray, budget: float, threads: int, overrides: dict, ladder=LADDER
) -> HeadRoute:
    """Runs the core once per rung of `ladder` (every head at that rung) and gives each query head the cheapest rung
    whose error on that head is within `budget` (heads are independent: a head's output under per-head lists is
    its output under its rung's scalar settings; tests/ops/test_per_head.py), else budget 0 (exact). The ladder
    stops once every head has a rung (route.ladder: the rungs run). ref: the exact output as [B, Hq, S, Dv].
    A window that leaves no key out at the calibration's length (window + num_sink >= T) is not a rung: it would
    measure exact attention and then make the head stream at the longer prompts it was never tried on."""
    dims = core_dims(node, tensors)
    Hq = dims.Hq
    sinks = {**contract.attribute_defaults(), **_attrs(node), **overrides}["num_sink"]
    ladder = [r for r in ladder if r.window == 0 or r.window + sinks < dims.T]
    errors = []
    for rung in ladder:
        attrs = {**rung.attrs(Hq), **overrides}
        y, _ = _run(node, tensors, attrs, threads, 0)
        errors.append([_error(node, tensors, attrs, y[:, [h]], ref[:, [h]])[0] for h in range(Hq)])
        if all(any(e[h] <= budget for e in errors) for h in range(Hq)):
            break  # every head has its cheapest rung: the costlier rungs cannot change the route
    ran = ladder[: len(errors)]
    fits = [next((rung for rung, e in zip(ran, errors) if e[h] <= budget), Rung()) for h in range(Hq)]
    return HeadRoute(
        list(ran), errors, [r.budget for r in fits], [r.tail_samples for r in fits], [r.window for r in fits]
    )


def calibrate(
    input_path: Path,
    output_path: Path,
    ids: list[int],
    budget: float,
    threads: int = 2,
    reps: int = 1,
    overrides: dict | None = None,
    console: Console | None = None,
    per_head: bool = True,
) -> CalibrationReport:
    console = console or Console(stderr=True)
    if output_path.exists() and output_path.resolve() == input_path.resolve():
        raise RewriteError(f"{output_path}: the output path is the input path; refusing to overwrite the input")
    console.print(f"running {input_path.name} on {len(ids)} tokens to capture the cores' inputs")
    cores, tensors = capture_core_inputs(input_path, feeds(ids), threads)
    report = CalibrationReport(str(input_path), str(output_path), len(ids), budget)
    for i, (node, t) in enumerate(zip(cores, tensors)):
        r = calibrate_core(i, node, t, budget, threads, reps, overrides=overrides, per_head=per_head)
        report.cores.append(r)
        console.print(
            f"core {i}: exact {r.exact_ms:.0f} ms; "
            + ", ".join(f"{json.dumps(x.attrs)} {x.ms:.0f} ms {100 * x.error:.2f}%" for x in r.trials)
            + f" -> {json.dumps(r.chosen)}"
        )
    apply_settings(input_path, output_path, {r.core: r.chosen for r in report.cores})
    return report


def _print(report: CalibrationReport, console: Console) -> None:
    t = Table(title=f"ice-calibrate: {report.tokens} tokens, budget {100 * report.budget:.1f}% relative output error")
    for col in ("core", "chosen", "ms", "exact ms", "speedup", "error %"):
        t.add_column(col)
    for r in report.cores:
        t.add_row(
            str(r.core),
            json.dumps(r.chosen),
            f"{r.ms:.0f}",
            f"{r.exact_ms:.0f}",
            f"{r.exact_ms / r.ms:.2f}x",
            f"{100 * r.error:.2f}",
        )
    console.print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="ice-calibrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "input",
        type=Path,
        help="a model or model folder rewritten by ice-rewrite (KnnAttention or GroupQueryAttention cores)",
    )
    ap.add_argument(
        "output",
        type=Path,
        help="the calibrated model, or a new folder for a folder (written atomically; never the input)",
    )
    ap.add_argument("--model", choices=DECODERS, required=True, help="whose tokenizer makes the calibration text")
    ap.add_argument("--tokens", type=int, default=8192, help="calibration length: the prompt length you deploy")
    ap.add_argument("--budget", type=float, default=0.02, help="largest mean relative output error per core")
    ap.add_argument("--min-keys", type=int, help="min_keys for every core (default: each core's own)")
    ap.add_argument(
        "--per-head",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also try per query head settings (head_budgets / head_tail_samples / head_windows from LADDER, each head "
        "the cheapest rung within --budget on its own rows, else exact) as one more candidate per core (default: on)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--reps",
        type=int,
        default=1,
        help="timed runs per candidate, median (the first run also gives the output checked)",
    )
    ap.add_argument("--json", type=Path, help="write the report here")
    args = ap.parse_args(argv)
    console = Console(stderr=True)
    if not 0 < args.budget < 1:
        ap.error("--budget must be in (0, 1)")
    overrides = {} if args.min_keys is None else {"min_keys": args.min_keys}
    try:
        ids = text_ids(tokenizer(args.model), args.tokens, start=TEXT_START)
        report = calibrate(
            args.input, args.output, ids, args.budget, args.threads, args.reps, overrides, console, args.per_head
        )
    except RewriteError as e:
        console.print(f"[red]ice-calibrate: {e}[/red]")
        return 2
    _print(report, console)
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
