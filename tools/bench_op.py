"""Benchmark KnnAttention against ONNX Runtime's dense attention kernels in the same process.

The op runs the SIMD tier this CPU's best (or the one ICEFORMER_SIMD forces: one per process), named in the
"tier" column. Variants per (n, causal, head layout), run interleaved (one run of each in turn, `--reps` rounds), same
thread count, medians reported with ratios (time of ORT's kernel / time of ours: > 1 means we are faster):
  ours-exact   KnnAttention, top_k = 0
  ours-knn     KnnAttention with the k-NN attributes given by --knn (omitted when --knn is not given); a second and
               further --knn give ours-knn-2, ... The k-NN rows also report the output's mean relative error
               against ours-exact over the rows that may take the k-NN path (error %, worst head %).
  ort-gqa      com.microsoft.GroupQueryAttention, causal rows only (what onnxruntime-genai runs: ORT's strongest
               CPU attention, flash-style causal prefill); the headline for causal rows
  ort-mha      com.microsoft.MultiHeadAttention (causal = unidirectional=1; GQA: K/V repeated to Hq heads first)
  ort-attn23   standard ONNX Attention, opset 23 (is_causal=1 for causal)
With --decode P...: one-token decode steps from P cached keys on, our GroupQueryAttention exact (flash decoding) and
k-NN against ORT's, past and present bound to one buffer per layer (IOBinding, as genai runs them); with --data the
rows of the capture's layer (ours-knn's error is against ORT's exact output).

  ice-bench-op --n 1024 4096 8192 --causal both --threads 2 --json out.json
  ice-bench-op --n 2048 --causal yes --ort-kernels gqa --data qwen32k.npz --decode 16384 32704
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from ..metrics import eligible_rows, recall_at_k, relative_error
from ..ops import (
    make_attention_model,
    make_gqa_model,
    make_knn_attention_model,
    session_options,
    simd_variant,
)
from ..ops.cases import AttentionCase


@dataclass
class Row:
    n: int
    causal: int
    Hq: int
    Hkv: int
    D: int
    data: str  # "synthetic", or "capture layer L" (real activations)
    times_ms: dict[str, float] = field(default_factory=dict)
    knn_stats: dict | None = None
    recall: float | None = None  # recall@top_k of the k-NN settings on sampled rows of the first head
    # per k-NN variant: [mean relative output error vs ours-exact over k-NN-eligible rows, worst head's mean]
    errors: dict[str, list[float]] = field(default_factory=dict)
    # the op library's SIMD tier in this process (ICEFORMER_SIMD forces one; ORT's kernels pick their own)
    simd: str = field(default_factory=simd_variant)


def knn_names(knn: list[dict] | None) -> list[str]:
    return ["ours-knn" if i == 0 else f"ours-knn-{i + 1}" for i in range(len(knn or []))]


def _session(model, threads: int, custom: bool, spin: bool = True) -> ort.InferenceSession:
    if custom:
        so = session_options(threads)
    else:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
    if not spin:  # idle sessions' pool threads would spin on the cores the next session's run needs
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _variants(
    case: AttentionCase, threads: int, knn: list[dict] | None, ort_kernels: tuple[str, ...] = ("gqa", "mha", "attn23")
):
    x = case.inputs()
    q, k, v = x["Q"], x["K"], x["V"]
    ours = {"Q": q, "K": k, "V": v}
    out = {"ours-exact": (_session(make_knn_attention_model(is_causal=case.is_causal, top_k=0), threads, True), ours)}
    for name, attrs in zip(knn_names(knn), knn or []):
        out[name] = (_session(make_knn_attention_model(is_causal=case.is_causal, **attrs), threads, True), ours)
    # MultiHeadAttention has no KV groups: for GQA its K/V are repeated to Hq heads beforehand (outside the timing),
    # which gives ORT the cheaper layout, not us.
    to3 = lambda a: np.ascontiguousarray(a.transpose(0, 2, 1, 3).reshape(a.shape[0], a.shape[2], -1))  # noqa: E731
    rep = lambda a: np.repeat(a, case.Hq // case.Hkv, axis=1)  # noqa: E731
    if "mha" in ort_kernels:
        mha = make_attention_model("mha", num_heads=case.Hq, causal=bool(case.is_causal))
        out["ort-mha"] = (_session(mha, threads, False), {"q": to3(q), "k": to3(rep(k)), "v": to3(rep(v))})
    if "attn23" in ort_kernels:
        attn = make_attention_model("onnx", num_heads=case.Hq, kv_num_heads=case.Hkv, causal=bool(case.is_causal))
        out["ort-attn23"] = (_session(attn, threads, False), {"q": q, "k": k, "v": v})
    if (
        "gqa" in ort_kernels and case.is_causal and case.S == case.T
    ):  # GroupQueryAttention is causal only: a first prompt of n tokens
        gqa = make_gqa_model(domain="com.microsoft", num_heads=case.Hq, kv_num_heads=case.Hkv, past=False)
        n = np.array([case.T], np.int32)
        out["ort-gqa"] = (
            _session(gqa, threads, False),
            {"query": to3(q), "key": to3(k), "value": to3(v), "seqlens_k": n - 1, "total_sequence_length": n},
        )
    return out


def run_row(
    case: AttentionCase,
    threads: int,
    reps: int,
    knn: list[dict] | None,
    stats_path: str,
    ort_kernels: tuple[str, ...] = ("gqa", "mha", "attn23"),
) -> Row:
    variants = _variants(case, threads, knn, ort_kernels)
    outputs, stats_line = {}, None
    for name, (sess, feeds) in variants.items():  # warm-up; the outputs give the k-NN errors
        outputs[name] = sess.run(None, feeds)[0]
        if name == "ours-knn" and os.path.exists(stats_path):
            with open(stats_path) as f:
                last = json.loads(f.read().splitlines()[-1])
            stats_line = last if last["path"] == "knn" else None
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, (sess, feeds) in variants.items():
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times[name].append((time.perf_counter() - t0) * 1e3)
    data = "synthetic" if case.capture is None else f"layer {case.capture_layer}"
    row = Row(
        case.T, case.is_causal, case.Hq, case.Hkv, case.D, data, {k: statistics.median(v) for k, v in times.items()}
    )
    for name, attrs in zip(knn_names(knn), knn or []):
        eligible = eligible_rows(case.S, case.T, bool(case.is_causal), attrs)
        row.errors[name] = list(relative_error(outputs[name], outputs["ours-exact"], eligible))
    if knn:
        x = case.inputs()
        rows = np.linspace(case.S // 2, case.S - 1, 64).astype(int)
        row.recall = recall_at_k(x["Q"][0, 0], x["K"][0, 0], rows, is_causal=case.is_causal, **knn[0])
        row.knn_stats = stats_line
    if os.path.exists(stats_path):
        os.remove(stats_path)
    return row


@dataclass
class DecodeRow:
    past: int
    Hq: int
    Hkv: int
    D: int
    data: str  # "synthetic", or "capture layer L"
    layers: int  # GroupQueryAttention nodes per step, each over its own cache (a model's layers)
    steps: int
    times_ms: dict[str, float] = field(default_factory=dict)  # per node and step, median over steps
    # ours-knn: [mean relative output error vs ort-gqa over heads, layers and steps, worst step's mean]
    errors: dict[str, list[float]] = field(default_factory=dict)
    knn_stats: dict | None = None  # the last k-NN step's statistics line
    simd: str = field(default_factory=simd_variant)


def _decode_model(domain: str, Hq: int, Hkv: int, layers: int, **attrs) -> onnx.ModelProto:
    """`layers` GroupQueryAttention nodes on one new token, node l over its own buffer past_key_l / present_key_l (as a
    model's layers are in one decode step); outputs output_l."""
    one = make_gqa_model(domain=domain, num_heads=Hq, kv_num_heads=Hkv, past=True, **attrs)
    node = one.graph.node[0]
    shared = ["query", "key", "value", "seqlens_k", "total_sequence_length"]
    own = lambda name, layer: name if name in shared else f"{name}_{layer}"  # noqa: E731
    nodes, inputs, outputs = [], [i for i in one.graph.input if i.name in shared], []
    for layer in range(layers):
        n = onnx.NodeProto()
        n.CopyFrom(node)
        n.name = f"gqa_{layer}"
        n.input[:] = [own(x, layer) for x in node.input]
        n.output[:] = [own(x, layer) for x in node.output]
        nodes.append(n)
        for v, dst in ((one.graph.input, inputs), (one.graph.output, outputs)):
            for info in v:
                if info.name not in shared:
                    c = onnx.ValueInfoProto()
                    c.CopyFrom(info)
                    c.name = own(info.name, layer)
                    dst.append(c)
    graph = onnx.helper.make_graph(nodes, "decode", inputs, outputs)
    model = onnx.helper.make_model(graph, opset_imports=list(one.opset_import))
    model.ir_version = one.ir_version
    return model


def _decode_rows(data: str | None, layer: int, past: int, steps: int, Hq: int, Hkv: int, D: int):
    """Q, K, V [H, past + steps, D]: a capture layer's first rows, or Gaussian rows."""
    if data:
        d = np.load(data)
        if d["Q"].shape[2] < past + steps:
            raise SystemExit(f"{data} holds {d['Q'].shape[2]} tokens; --decode {past} needs {past + steps}")
        return tuple(np.ascontiguousarray(d[n][layer][:, : past + steps], np.float32) for n in ("Q", "K", "V"))
    rng = np.random.default_rng(past)
    return tuple(rng.standard_normal((h, past + steps, D)).astype(np.float32) for h in (Hq, Hkv, Hkv))


def run_decode_row(args, past: int, Hq: int, Hkv: int, D: int, stats_path: str) -> DecodeRow:
    """Decode steps over `past` cached keys, then past + 1, ...: our GroupQueryAttention exact (flash decoding) and
    k-NN (defaults, or the first --knn) against ORT's, each over its own shared KV buffers (IOBinding, as genai runs
    them), `--decode-layers` nodes per step, interleaved step by step. The exact variants' caches are filled directly;
    ours-knn runs the prompt through the op first, so its index is built as in generation. Between two runs a 256 MB
    buffer is read: a real step streams the weights and the other layers' caches through the CPU caches. The pool
    threads do not spin (three sessions take turns on the same cores)."""
    layer = args.data_layers[0]
    L, steps = args.decode_layers, args.decode_steps
    Q, K, V = _decode_rows(args.data, layer, past, steps, Hq, Hkv, D)
    Hq, Hkv, D = Q.shape[0], K.shape[0], Q.shape[2]
    tok = lambda x, a, b: np.ascontiguousarray(x[:, a:b].transpose(1, 0, 2).reshape(1, b - a, -1))  # noqa: E731
    variants = {
        "ours-knn": ("iceformer", (args.knn or [{}])[0]),
        "ours-exact": ("iceformer", {"top_k": 0}),
        "ort-gqa": ("com.microsoft", {}),
    }
    runs = {}
    for name, (domain, attrs) in variants.items():
        sess = _session(_decode_model(domain, Hq, Hkv, L, **attrs), args.threads, domain == "iceformer", spin=False)
        kv = []
        for _ in range(L):
            cache = np.zeros((2, 1, Hkv, past + steps, D), np.float32)
            if name != "ours-knn":
                cache[0, 0, :, :past], cache[1, 0, :, :past] = K[:, :past], V[:, :past]
            kv.append([ort.OrtValue.ortvalue_from_numpy(cache[i]) for i in range(2)])
        runs[name] = (sess, kv)

    def step(name: str, a: int, b: int) -> tuple[list[np.ndarray], float]:
        sess, kv = runs[name]
        io = sess.io_binding()
        for n, x in (("query", Q), ("key", K), ("value", V)):
            io.bind_cpu_input(n, tok(x, a, b))
        io.bind_cpu_input("seqlens_k", np.array([b - 1], np.int32))
        io.bind_cpu_input("total_sequence_length", np.array([b], np.int32))
        for i in range(L):  # outputs first: copy_outputs_to_cpu returns them in binding order
            io.bind_output(f"output_{i}")
        for i, (k_buf, v_buf) in enumerate(kv):
            io.bind_ortvalue_input(f"past_key_{i}", k_buf)
            io.bind_ortvalue_input(f"past_value_{i}", v_buf)
            io.bind_ortvalue_output(f"present_key_{i}", k_buf)
            io.bind_ortvalue_output(f"present_value_{i}", v_buf)
        t0 = time.perf_counter()
        sess.run_with_iobinding(io)
        ms = (time.perf_counter() - t0) * 1e3 / L
        return [io.get_outputs()[i].numpy() for i in range(L)], ms

    step("ours-knn", 0, past)  # the prompt: builds our index
    flush = np.ones(64 << 20, np.float32)
    times: dict[str, list[float]] = {name: [] for name in runs}
    errs = []
    for r in range(steps):
        outs = {}
        for name in runs:
            flush.sum()
            outs[name], ms = step(name, past + r, past + r + 1)
            times[name].append(ms)
        for got, ref in zip(outs["ours-knn"], outs["ort-gqa"]):
            g, w = got.reshape(Hq, D).astype(np.float64), ref.reshape(Hq, D).astype(np.float64)
            errs.append(np.mean(np.linalg.norm(g - w, axis=-1) / np.maximum(np.linalg.norm(w, axis=-1), 1e-30)))
    per_step = np.asarray(errs).reshape(steps, L).mean(axis=1)
    row = DecodeRow(
        past,
        Hq,
        Hkv,
        D,
        f"capture layer {layer}" if args.data else "synthetic",
        L,
        steps,
        {k: statistics.median(v[1:] if len(v) > 1 else v) for k, v in times.items()},
        {"ours-knn": [float(np.mean(errs)), float(per_step.max())]},
    )
    if os.path.exists(stats_path):
        with open(stats_path) as f:
            lines = [json.loads(x) for x in f.read().splitlines()]
        knn = [x for x in lines if x.get("S") == 1 and x.get("top_k", 0) > 0]
        row.knn_stats = knn[-1] if knn else None
        os.remove(stats_path)
    return row


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="ice-bench-op", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--n", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384], help="sequence lengths (S = T)"
    )
    ap.add_argument("--causal", choices=["no", "yes", "both"], default="both")
    ap.add_argument(
        "--layouts",
        nargs="+",
        default=["mha", "gqa"],
        choices=["mha", "gqa"],
        help="mha: Hq = Hkv = --heads; gqa: Hq = --heads, Hkv = --heads / 2",
    )
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--knn",
        type=json.loads,
        action="append",
        default=None,
        help="k-NN attributes as JSON on top of the defaults, e.g. '{\"min_keys\": 0}' (omit: no k-NN column; "
        "repeat for more k-NN columns)",
    )
    ap.add_argument(
        "--clusters",
        type=int,
        default=64,
        help="draw Q and K around this many shared centres (peaked attention, like real models); "
        "0: i.i.d. normal data, the diffuse worst case",
    )
    ap.add_argument(
        "--data",
        help="an ice-capture-qk file: real Q/K/V (its first n tokens, its own heads) instead of "
        "synthetic data; --layouts, --heads, --head-dim and --clusters are then unused",
    )
    ap.add_argument(
        "--data-layers", type=int, nargs="+", default=[0], help="capture layer indices to run (with --data)"
    )
    ap.add_argument(
        "--ort-kernels",
        nargs="+",
        default=["gqa", "mha", "attn23"],
        choices=["gqa", "mha", "attn23"],
        help="which ORT kernels to time (GroupQueryAttention only applies to causal rows)",
    )
    ap.add_argument(
        "--decode",
        type=int,
        nargs="*",
        default=[],
        help="also time one-token decode steps from these numbers of cached keys (GroupQueryAttention: ours exact and "
        "k-NN vs ORT's; with --data the first --data-layers layer's rows, else Gaussian rows with the first case's heads)",
    )
    ap.add_argument("--decode-steps", type=int, default=16, help="decode steps timed per number of cached keys")
    ap.add_argument(
        "--decode-layers", type=int, default=4, help="GroupQueryAttention nodes per step, each over its own cache"
    )
    ap.add_argument("--json", help="write the rows as JSON to this file")
    ap.add_argument("--plot", help="write a log-log PNG of time against n (ORT dense, our exact, our k-NN)")
    return ap.parse_args(argv)


def _cases(args) -> list[AttentionCase]:
    """The calls to time: the capture's layers (--data) or synthetic data per layout, causal and n."""
    causal_list = {"no": [0], "yes": [1], "both": [0, 1]}[args.causal]
    cases = []
    if args.data:
        cases = [
            AttentionCase.from_capture(args.data, li, n, is_causal=c)
            for li in args.data_layers
            for c in causal_list
            for n in args.n
        ]
    else:
        for layout in args.layouts:
            hkv = args.heads if layout == "mha" else max(1, args.heads // 2)
            cases += [
                AttentionCase(
                    Hq=args.heads, Hkv=hkv, S=n, T=n, D=args.head_dim, is_causal=c, seed=n, clusters=args.clusters
                )
                for c in causal_list
                for n in args.n
            ]
    return cases


def _table(rows: list[Row], args) -> Table:
    names = knn_names(args.knn)
    table = Table(
        title=f"attention per call, median of {args.reps}, {args.threads} threads, D={args.head_dim} "
        "(ratio = best ORT kernel's time / our time; error = mean relative output error against "
        "ours-exact, worst head in brackets)"
    )
    for col in (
        [
            "data",
            "tier",
            "layout",
            "causal",
            "n",
            "ours-exact ms",
            "ort-gqa ms",
            "ort-mha ms",
            "ort-attn23 ms",
            "best-ort/exact",
        ]
        + [c for nm in names for c in (f"{nm} ms", f"best-ort/{nm}", f"{nm} error %")]
        + ["knn scored mean/p99", "scored/n", "recall@k", "fallback %", "build %"]
    ):
        table.add_column(col, justify="right")
    for r in rows:
        t = r.times_ms
        best = min([v for k, v in t.items() if k.startswith("ort-")], default=float("nan"))
        fmt = lambda key, t=t: f"{t[key]:.1f}" if key in t else "-"  # noqa: E731
        ks = r.knn_stats or {}
        knn_cells = [
            c
            for nm in names
            for c in (fmt(nm), f"{best / t[nm]:.2f}", f"{100 * r.errors[nm][0]:.2f} ({100 * r.errors[nm][1]:.2f})")
        ]
        table.add_row(
            r.data,
            r.simd,
            "mha" if r.Hq == r.Hkv else f"gqa {r.Hq}:{r.Hkv}",
            str(r.causal),
            str(r.n),
            fmt("ours-exact"),
            fmt("ort-gqa"),
            fmt("ort-mha"),
            fmt("ort-attn23"),
            f"{best / t['ours-exact']:.2f}",
            *knn_cells,
            f"{ks['mean_candidates']:.0f}/{ks['p99_candidates']:.0f}" if ks else "-",
            f"{ks['mean_candidates'] / r.n:.3f}" if ks else "-",
            f"{r.recall:.3f}" if r.recall is not None else "-",
            f"{100 * ks['fallback_rows'] / max(1, ks['knn_rows']):.1f}" if ks else "-",
            f"{100 * ks['build_ms'] / ks['total_ms']:.1f}" if ks and ks.get("total_ms") else "-",
        )
    return table


def _decode_table(decode: list, args) -> Table:
    dt = Table(
        title=f"decode steps over shared KV buffers, median per layer and step, {args.threads} threads "
        "(ratio = other time / ours-knn time)"
    )
    cols = ["cached keys", "data", "tier", "Hq:Hkv", "ours-knn ms", "ours-exact ms", "ort-gqa ms"]
    for col in cols + ["exact/knn", "ort/knn", "ort/exact", "error % (worst step)", "keys read"]:
        dt.add_column(col, justify="right")
    for d in decode:
        t, e = d.times_ms, d.errors["ours-knn"]
        read = d.knn_stats["mean_candidates"] if d.knn_stats else 0
        dt.add_row(
            str(d.past),
            d.data,
            d.simd,
            f"{d.Hq}:{d.Hkv}",
            *(f"{t[k]:.3f}" for k in ("ours-knn", "ours-exact", "ort-gqa")),
            f"{t['ours-exact'] / t['ours-knn']:.2f}",
            f"{t['ort-gqa'] / t['ours-knn']:.2f}",
            f"{t['ort-gqa'] / t['ours-exact']:.2f}",
            f"{100 * e[0]:.2f} ({100 * e[1]:.2f})",
            f"{read:.0f}",
        )
    return dt


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    stats_path = os.path.join(tempfile.mkdtemp(prefix="ice-bench-"), "stats.jsonl")
    os.environ["ICEFORMER_STATS"] = stats_path
    console = Console(width=200)
    cases, rows = _cases(args), []
    for case in cases:
        rows.append(run_row(case, args.threads, args.reps, args.knn, stats_path, tuple(args.ort_kernels)))
        console.log(
            f"{rows[-1].data} H{case.Hq}/{case.Hkv} causal={case.is_causal} n={case.T}: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in rows[-1].times_ms.items())
        )
    console.print(_table(rows, args))
    decode = [run_decode_row(args, p, cases[0].Hq, cases[0].Hkv, cases[0].D, stats_path) for p in args.decode]
    for d in decode:
        console.log(f"decode {d.past}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in d.times_ms.items()))
    if decode:
        console.print(_decode_table(decode, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"args": vars(args), "rows": [asdict(r) for r in rows], "decode": [asdict(d) for d in decode]},
                f,
                indent=1,
            )
    if args.plot:
        plot(
            rows,
            args.plot,
            f"{args.threads} threads, D={cases[0].D}" + (f", {os.path.basename(args.data)}" if args.data else ""),
        )


def plot(rows: list[Row], path: str, subtitle: str) -> None:
    """Log-log time against n per (layout, causal): ORT's best dense kernel, our exact path, our k-NN path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = lambda r: (r.data, "mha" if r.Hq == r.Hkv else f"gqa {r.Hq}:{r.Hkv}", r.causal)  # noqa: E731
    groups = sorted({key(r) for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, (data, layout, causal) in zip(axes[0], groups):
        sel = sorted((r for r in rows if key(r) == (data, layout, causal)), key=lambda r: r.n)
        n = [r.n for r in sel]
        ort_best = [min([v for k, v in r.times_ms.items() if k.startswith("ort-")], default=float("nan")) for r in sel]
        ax.loglog(n, ort_best, "o-", label="ONNX Runtime dense (best kernel)")
        ax.loglog(n, [r.times_ms["ours-exact"] for r in sel], "s-", label="KnnAttention exact")
        if all("ours-knn" in r.times_ms for r in sel):
            ax.loglog(n, [r.times_ms["ours-knn"] for r in sel], "^-", label="KnnAttention k-NN")
        ax.set_title(f"{data}, {layout}, {'causal' if causal else 'non-causal'}", fontsize=9)
        ax.set_xlabel("n (S = T)")
        ax.set_ylabel("ms per call")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"attention time vs sequence length ({subtitle})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
