"""Accuracy and speed of the k-NN path on captured real activations (see ice-capture-qk).

For each layer of the capture: the op (exact and each k-NN setting) on Q [1,Hq,T,D], K/V [1,Hkv,T,D], causal;
relative error of the attention output against the exact path (mean over query rows that see >= min_keys
keys), recall of the exact top-k keys among the attended keys (sampled rows, first query head of each KV head),
and the time of the call against ONNX Runtime's opset-23 Attention in the same process.

  ice-eval-knn                      # the capture shipped with the package (SmolLM2, 2048 tokens), forced k-NN
  ice-eval-knn qkv.npz --attrs '{"top_k": 32, "max_candidates": 128}' --attrs '{"top_k": 64}'

Without a file it runs on the shipped capture (SmolLM2-135M, 2048 tokens of Brown text, layers 0 / 13 / 24) with
the default attributes and the k-NN path forced on from 0 keys. Speed at long context on synthetic data, against
ORT's kernels: ice-bench-op.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from ..metrics import eligible_rows, recall_at_k, relative_error
from ..ops import make_attention_model, make_knn_attention_model, session_options

SHIPPED = Path(__file__).resolve().parent / "data" / "smollm2_qkv_2048.npz"


def _timed(sess, feeds, reps):
    ts = []
    out = None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = sess.run(None, feeds)[0]
        ts.append((time.perf_counter() - t0) * 1e3)
    return out, statistics.median(ts)


def evaluate(path: str, configs: list[dict], threads: int, reps: int, layers: list[int] | None, console: Console):
    data = np.load(path)
    Q, K, V = (data[n].astype(np.float32) for n in ("Q", "K", "V"))
    group = int(data["group"])
    layer_ids = [int(x) for x in data["layers"]]
    pick = range(len(layer_ids)) if layers is None else [layer_ids.index(x) for x in layers]
    hq, T = Q.shape[1], Q.shape[2]
    hkv = K.shape[1]
    exact = ort.InferenceSession(
        make_knn_attention_model(is_causal=1).SerializeToString(),
        session_options(threads),
        providers=["CPUExecutionProvider"],
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    dense = ort.InferenceSession(
        make_attention_model("onnx", num_heads=hq, kv_num_heads=hkv, causal=True).SerializeToString(),
        so,
        providers=["CPUExecutionProvider"],
    )
    knn = [
        ort.InferenceSession(
            make_knn_attention_model(is_causal=1, **c).SerializeToString(),
            session_options(threads),
            providers=["CPUExecutionProvider"],
        )
        for c in configs
    ]
    results = [{"attrs": c, "layers": []} for c in configs]
    t_exact, t_dense = [], []
    for li in pick:
        feeds = {"Q": Q[li][None], "K": K[li][None], "V": V[li][None]}
        ref, te = _timed(exact, feeds, reps)
        _, td = _timed(dense, {"q": feeds["Q"], "k": feeds["K"], "v": feeds["V"]}, reps)
        t_exact.append(te)
        t_dense.append(td)
        for c, sess, res in zip(configs, knn, results):
            y, tk = _timed(sess, feeds, reps)
            eligible = eligible_rows(T, T, True, c)
            err, _ = relative_error(y, ref, eligible)
            rows = np.arange(eligible.start, T, 97)
            rec = statistics.mean(recall_at_k(Q[li, h * group], K[li, h], rows, is_causal=1, **c) for h in range(hkv))
            res["layers"].append(
                {
                    "layer": layer_ids[li],
                    "rel_err": err,
                    "recall": rec,
                    "ms": tk,
                    "exact_ms": te,
                    "dense_ms": td,
                }
            )
        console.log(
            f"layer {layer_ids[li]}: "
            + ", ".join(
                f"cfg{n}: err {r['layers'][-1]['rel_err']:.3f} recall {r['layers'][-1]['recall']:.2f}"
                for n, r in enumerate(results)
            )
        )
    return results, statistics.median(t_exact), statistics.median(t_dense)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="ice-eval-knn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("data", nargs="?", default=str(SHIPPED), help="npz from ice-capture-qk (default: the shipped one)")
    ap.add_argument(
        "--attrs",
        type=json.loads,
        action="append",
        help='k-NN attributes (JSON); repeatable (default: {"min_keys": 0})',
    )
    ap.add_argument("--layers", type=int, nargs="*")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    args.attrs = args.attrs or [{"min_keys": 0}]
    console = Console(width=200)
    results, t_exact, t_dense = evaluate(args.data, args.attrs, args.threads, args.reps, args.layers, console)
    table = Table(
        title=f"k-NN path on {args.data} (causal; medians over layers; ORT dense {t_dense:.1f} ms, "
        f"our exact {t_exact:.1f} ms per layer call)"
    )
    for col in [
        "attrs",
        "mean rel. err",
        "max layer err",
        "mean recall@k",
        "min layer recall",
        "ms/call",
        "vs ORT dense",
        "vs our exact",
    ]:
        table.add_column(col, justify="right")
    for r in results:
        L = r["layers"]
        ms = statistics.median(x["ms"] for x in L)
        table.add_row(
            json.dumps(r["attrs"]),
            f"{np.mean([x['rel_err'] for x in L]):.4f}",
            f"{max(x['rel_err'] for x in L):.4f}",
            f"{np.mean([x['recall'] for x in L]):.3f}",
            f"{min(x['recall'] for x in L):.3f}",
            f"{ms:.1f}",
            f"{t_dense / ms:.2f}x",
            f"{t_exact / ms:.2f}x",
        )
    console.print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"exact_ms": t_exact, "dense_ms": t_dense, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
