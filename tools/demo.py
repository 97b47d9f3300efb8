"""The main job (until the model rewriter and the real-model pipeline land).

1. Accuracy on real activations: Q, K, V of SmolLM2-135M on Brown-corpus text (2048 tokens, layers 0 / 13 / 24,
   one KV head and its 3 query heads, shipped with the package): the exact path against ONNX Runtime's own
   Attention, and the k-NN path (forced on with min_keys=0; defaults otherwise) against exact attention.
2. Speed at long context: one attention call with n = 16384 (3 query heads on 1 KV head, head dim 64, seeded
   random data), ONNX Runtime's opset-23 Attention against KnnAttention exact and KnnAttention with its default
   attributes, non-causal and causal, interleaved runs, medians. Queries and keys are drawn around 64 shared
   centres with no positional structure: neighbouring queries want unrelated keys, so the k-NN path's block sets
   (the union of 64 neighbouring queries' keys) cover much of the sequence and many blocks go exact. It shows the
   worst case of the default path; `ice-bench-op --data` measures the op on captured real activations.

  ice-demo [--n 16384] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from ..metrics import recall_at_k
from ..ops import contract, make_attention_model, make_knn_attention_model, session_options
from ..ops.cases import AttentionCase

FIXTURE = Path(__file__).resolve().parent / "data" / "smollm2_qkv_2048.npz"


def _sess(model, threads: int, ours: bool) -> ort.InferenceSession:
    so = session_options(threads) if ours else ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _stats(path: str) -> dict:
    lines = Path(path).read_text().splitlines() if os.path.exists(path) else []
    return json.loads(lines[-1]) if lines else {}


def accuracy(console: Console, threads: int, stats_path: str) -> None:
    d = np.load(FIXTURE)
    Q, K, V = (d[n].astype(np.float32) for n in ("Q", "K", "V"))
    hq, hkv = Q.shape[1], K.shape[1]
    dense = _sess(make_attention_model("onnx", num_heads=hq, kv_num_heads=hkv, causal=True), threads, False)
    exact = _sess(make_knn_attention_model(is_causal=1, top_k=0), threads, True)
    knn = _sess(make_knn_attention_model(is_causal=1, min_keys=0), threads, True)
    defaults = {a: v for a, v in contract.attribute_defaults().items() if a not in ("scale", "is_causal")}
    first = contract.knn_threshold({**defaults, "min_keys": 0}) - 1
    table = Table(
        title=f"real SmolLM2-135M activations, 2048 tokens, causal (k-NN rows: queries past the first {first})"
    )
    for col in [
        "layer",
        "exact vs ORT: max |diff|",
        "k-NN rel. error (mean / p99)",
        "recall@128",
        "keys scored / query",
        "rows sent back to exact",
    ]:
        table.add_column(col, justify="right")
    for li, layer in enumerate(d["layers"]):
        feeds = {"Q": Q[li][None], "K": K[li][None], "V": V[li][None]}
        y_dense = dense.run(None, {"q": feeds["Q"], "k": feeds["K"], "v": feeds["V"]})[0]
        y_exact = exact.run(None, feeds)[0]
        open(stats_path, "w").close()
        y_knn = knn.run(None, feeds)[0]
        st = _stats(stats_path)
        err = (np.linalg.norm(y_knn - y_exact, axis=-1) / np.linalg.norm(y_exact, axis=-1))[0, :, first:]
        rec = recall_at_k(Q[li, 0], K[li, 0], range(first, Q.shape[2], 7), is_causal=1, min_keys=0)
        table.add_row(
            str(layer),
            f"{np.abs(y_exact - y_dense).max():.1e}",
            f"{err.mean():.4f} / {np.quantile(err, 0.99):.4f}",
            f"{rec:.3f}",
            f"{st.get('mean_candidates', 0):.0f}",
            f"{st.get('fallback_rows', 0)} of {st.get('knn_rows', 0)}",
        )
    console.print(table)


def speed(console: Console, n: int, threads: int, reps: int, stats_path: str) -> None:
    table = Table(
        title=f"one attention call, n = {n}, Hq=3 / Hkv=1, D=64, clustered random data, {threads} "
        f"threads (median of {reps}, interleaved)"
    )
    for col in [
        "mask",
        "ORT Attention ms",
        "KnnAttention exact ms",
        "KnnAttention default ms",
        "exact speedup",
        "default speedup",
        "path of default",
        "keys scored / query",
    ]:
        table.add_column(col, justify="right")
    for causal in (0, 1):
        case = AttentionCase(Hq=3, Hkv=1, S=n, T=n, D=64, is_causal=causal, seed=1, clusters=64)
        x = case.inputs()
        feeds = {"Q": x["Q"], "K": x["K"], "V": x["V"]}
        variants = {
            "dense": (
                _sess(make_attention_model("onnx", num_heads=3, kv_num_heads=1, causal=bool(causal)), threads, False),
                {"q": x["Q"], "k": x["K"], "v": x["V"]},
            ),
            "exact": (_sess(make_knn_attention_model(is_causal=causal, top_k=0), threads, True), feeds),
            "default": (_sess(make_knn_attention_model(is_causal=causal), threads, True), feeds),
        }
        times = {k: [] for k in variants}
        for s, f in variants.values():
            s.run(None, f)
        for _ in range(reps):
            for name, (s, f) in variants.items():
                open(stats_path, "w").close()
                t0 = time.perf_counter()
                s.run(None, f)
                times[name].append((time.perf_counter() - t0) * 1e3)
                if name == "default":
                    st = _stats(stats_path)
        med = {k: statistics.median(v) for k, v in times.items()}
        table.add_row(
            "causal" if causal else "none",
            f"{med['dense']:.0f}",
            f"{med['exact']:.0f}",
            f"{med['default']:.0f}",
            f"{med['dense'] / med['exact']:.2f}x",
            f"{med['dense'] / med['default']:.2f}x",
            f"{st.get('path', '?')} ({st.get('knn_rows', 0)} rows k-NN)",
            f"{st.get('mean_candidates', 0):.0f}",
        )
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="ice-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    console = Console(width=170)
    stats_path = os.path.join(tempfile.mkdtemp(prefix="ice-demo-"), "stats.jsonl")
    os.environ["ICEFORMER_STATS"] = stats_path
    console.print("[bold]iceformer demo[/bold]: the KnnAttention ONNX Runtime op against ONNX Runtime's own attention")
    accuracy(console, args.threads, stats_path)
    speed(console, args.n, args.threads, args.reps, stats_path)


if __name__ == "__main__":
    main()
