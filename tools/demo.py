"""The main job (until the real-model pipeline lands): KnnAttention against ONNX Runtime's dense attention on
one SmolLM2-135M-shaped attention call (9 query heads, 3 KV heads, head dim 64, causal prefill), printing
speed ratios, accuracy against dense, and the op's statistics.

  ice-demo --n 4096 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from ..ops import make_attention_model, make_knn_attention_model, session_options
from .cases import AttentionCase


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="ice-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--knn", type=json.loads, default={"top_k": 64, "max_candidates": 256, "tail_samples": 64},
                    help="k-NN attributes (JSON)")
    args = ap.parse_args(argv)
    console = Console(width=160)
    stats_path = os.path.join(tempfile.mkdtemp(prefix="ice-demo-"), "stats.jsonl")
    os.environ["ICEFORMER_STATS"] = stats_path

    case = AttentionCase(Hq=9, Hkv=3, S=args.n, T=args.n, D=64, is_causal=1, seed=0, peak=2.0)
    x = case.inputs()
    feeds = {"Q": x["Q"], "K": x["K"], "V": x["V"]}
    ort_so = ort.SessionOptions()
    ort_so.intra_op_num_threads = args.threads
    dense = ort.InferenceSession(
        make_attention_model("onnx", num_heads=9, kv_num_heads=3, causal=True).SerializeToString(), ort_so,
        providers=["CPUExecutionProvider"])
    variants = {
        "ORT dense (opset-23 Attention)": (dense, {"q": x["Q"], "k": x["K"], "v": x["V"]}),
        "KnnAttention exact": (ort.InferenceSession(make_knn_attention_model(is_causal=1).SerializeToString(),
                                                    session_options(args.threads), providers=["CPUExecutionProvider"]), feeds),
        "KnnAttention k-NN": (ort.InferenceSession(make_knn_attention_model(is_causal=1, **args.knn).SerializeToString(),
                                                   session_options(args.threads), providers=["CPUExecutionProvider"]), feeds),
    }
    console.print(f"[bold]iceformer demo[/bold]: causal prefill, n={args.n}, Hq=9, Hkv=3, D=64, {args.threads} threads, "
                  f"k-NN settings {args.knn}")
    outputs = {name: s.run(None, f)[0] for name, (s, f) in variants.items()}
    times = {name: [] for name in variants}
    for _ in range(args.reps):
        for name, (s, f) in variants.items():
            t0 = time.perf_counter()
            s.run(None, f)
            times[name].append((time.perf_counter() - t0) * 1e3)
    ref = outputs["ORT dense (opset-23 Attention)"].astype(np.float64)
    base = statistics.median(times["ORT dense (opset-23 Attention)"])
    table = Table(title="one attention call (medians of interleaved runs)")
    for col in ["variant", "ms", "speedup vs ORT dense", "mean rel. error vs dense", "p99 rel. error"]:
        table.add_column(col, justify="right")
    for name in variants:
        err = np.linalg.norm(outputs[name] - ref, axis=-1) / np.maximum(np.linalg.norm(ref, axis=-1), 1e-30)
        ms = statistics.median(times[name])
        table.add_row(name, f"{ms:.1f}", f"{base / ms:.2f}x", f"{err.mean():.2e}", f"{np.quantile(err, 0.99):.2e}")
    console.print(table)
    calls = [json.loads(line) for line in open(stats_path) if '"path":"knn"' in line]
    if calls:
        c = calls[-1]
        console.print(
            f"k-NN statistics (last call): rows on k-NN path {c['knn_rows']}, keys scored per query mean "
            f"{c['mean_candidates']:.0f} / p99 {c['p99_candidates']:.0f} of {args.n}, build {c['build_ms']:.1f} ms, "
            f"search+softmax {c['search_ms']:.1f} ms, total {c['total_ms']:.1f} ms")
    console.print("Data: seeded random Q/K/V (not real activations): accuracy on real models is the next step.")


if __name__ == "__main__":
    main()
