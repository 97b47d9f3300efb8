"""ice-eval: accuracy of KnnAttention on real pretrained models, against the same model with dense attention.

SmolLM2-135M-Instruct is exported (cached), rewritten with the given op attributes, and both models run in
onnxruntime on real text (Brown Corpus), same process and threads:
  --tokens N ...   perplexity on plain text and on the repeat test (second copy), greedy next-token agreement,
                   prefill time of both;
  --lines N ...    LongEval-style line retrieval: exact-match of the greedy answer and answer-token accuracy
                   (teacher forcing), --questions prompts per length;
  --layers N       per layer and head on real activations (Q/K/V captured from the torch model at N tokens,
                   causal): recall of the exact top-k keys, attention mass the attended keys capture, relative
                   error of the op's output against the exact path;
  --minilm         all-MiniLM-L6-v2 (our fp32 export and the int8 file): embedding cosine at 512 tokens;
  --memory N       peak RSS of one prefill of N tokens, original vs rewritten (fresh child processes).
Writes eval.json and PNG plots to --out.

  ice-eval --attrs '{"min_keys": 1024}' --tokens 4096 8192 --lines 2048 4096 8192 --layers 4096 --minilm --memory 8192
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.progress import track
from rich.table import Table

from .. import metrics
from ..metrics import peak_rss_mib
from ..models import export, export_smollm2, minilm
from ..models._cache import cache_dir
from ..ops import contract, make_knn_attention_model, session_options
from ..ops._library import knn_select
from ..rewriter import RewriteOptions, rewrite


def _plain(threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return so


def _timed_hidden(sess, ids):
    t0 = time.perf_counter()
    out = sess.run(None, metrics.feeds(ids))[0][0]
    return out, time.perf_counter() - t0


def eval_lm(sessions, lm_head, tok, sizes, console) -> list[dict]:
    rows = []
    for n in sizes:
        for which, ids in (("text", metrics.text_ids(tok, n)), ("repeat", metrics.repeat_ids(tok, n))):
            start = len(ids) // 2 if which == "repeat" else 0
            with console.status(f"{which}, {n} tokens: dense"):
                hd, td = _timed_hidden(sessions["dense"], ids)
            with console.status(f"{which}, {n} tokens: rewritten"):
                hk, tk = _timed_hidden(sessions["knn"], ids)
            pd, pred_d = metrics.perplexity(hd, lm_head, ids, start)
            pk, pred_k = metrics.perplexity(hk, lm_head, ids, start)
            rows.append(
                {
                    "tokens": len(ids),
                    "input": which,
                    "ppl_dense": pd,
                    "ppl_knn": pk,
                    "ppl_change": pk / pd - 1,
                    "agreement": float(np.mean(pred_d == pred_k)),
                    "dense_s": td,
                    "knn_s": tk,
                }
            )
            console.log(
                f"{which} {n}: ppl {pd:.3f} -> {pk:.3f} ({100 * (pk / pd - 1):+.2f}%), agreement "
                f"{100 * rows[-1]['agreement']:.2f}%, {td:.1f}s -> {tk:.1f}s"
            )
    return rows


def eval_lines(sessions, lm_head, tok, sizes, questions, console) -> list[dict]:
    rows = []
    for n in sizes:
        res = {"dense": [], "knn": []}
        for seed in track(range(questions), description=f"line retrieval, {n} tokens", console=console):
            p = metrics.line_prompt(tok, n, seed)
            for name in res:
                h = sessions[name].run(None, metrics.feeds(p.ids))[0][0]
                res[name].append((metrics.forced_correct(h, lm_head, p), metrics.answer_token_accuracy(h, lm_head, p)))
        row = {"tokens": n, "questions": questions}
        for name, r in res.items():
            row[f"exact_{name}"] = float(np.mean([c for c, _ in r]))
            row[f"token_acc_{name}"] = float(np.mean([a for _, a in r]))
        rows.append(row)
        console.log(
            f"lines {n}: exact match dense {row['exact_dense']:.2f} / rewritten {row['exact_knn']:.2f}; "
            f"answer tokens dense {row['token_acc_dense']:.3f} / rewritten {row['token_acc_knn']:.3f}"
        )
    return rows


def eval_layers(tokens: int, attrs: dict, threads: int, console, rows_per_head: int = 64) -> list[dict]:
    from .capture_qk import capture

    with console.status(f"capturing Q/K/V of every layer at {tokens} tokens (torch)"):
        data = capture(tokens, None, None)
    Q, K, V, group = data["Q"], data["K"], data["V"], int(data["group"])
    settings = {**contract.attribute_defaults(), **attrs}
    select = {a: v for a, v in settings.items() if a not in ("scale", "is_causal")}
    exact = ort.InferenceSession(
        make_knn_attention_model(is_causal=1, min_keys=1 << 30).SerializeToString(),
        session_options(threads),
        providers=["CPUExecutionProvider"],
    )
    knn = ort.InferenceSession(
        make_knn_attention_model(is_causal=1, **attrs).SerializeToString(),
        session_options(threads),
        providers=["CPUExecutionProvider"],
    )
    first = contract.knn_threshold(settings) - 1
    first = min(max(first, 0), tokens - 1)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(np.arange(first, tokens), size=min(rows_per_head, tokens - first), replace=False))
    top_k, d = settings["top_k"], Q.shape[-1]
    scale = settings["scale"] if settings["scale"] else 1.0 / np.sqrt(d)
    out = []
    for li in track(range(Q.shape[0]), description="per layer and head", console=console):
        feeds = {"Q": Q[li][None], "K": K[li][None], "V": V[li][None]}
        ref = exact.run(None, feeds)[0][0]
        y = knn.run(None, feeds)[0][0]
        for h in range(Q.shape[1]):
            kv = h // group
            err = np.linalg.norm(y[h, first:] - ref[h, first:], axis=-1) / np.maximum(
                np.linalg.norm(ref[h, first:], axis=-1), 1e-30
            )
            ids, _ = knn_select(Q[li, h], K[li, kv], is_causal=1, rows=sample, scale=scale, **select)
            rec, mass = [], []
            for t, i in enumerate(sample):
                z = (Q[li, h, i].astype(np.float64) @ K[li, kv, : i + 1].T.astype(np.float64)) * scale
                p = np.exp(z - z.max())
                p /= p.sum()
                chosen = np.asarray([j for j in ids[t] if 0 <= j <= i])
                mass.append(float(p[chosen].sum()) if chosen.size else 0.0)
                top = np.argpartition(-z, top_k)[:top_k] if i + 1 > top_k else np.arange(i + 1)
                rec.append(len(np.intersect1d(top, chosen)) / len(top))
            out.append(
                {
                    "layer": li,
                    "head": h,
                    "kv_head": kv,
                    "rel_err": float(err.mean()),
                    "rel_err_p99": float(np.quantile(err, 0.99)),
                    "recall": float(np.mean(rec)),
                    "mass": float(np.mean(mass)),
                }
            )
    return out


def eval_minilm(attrs: dict, threads: int, out_dir: Path, console) -> list[dict]:
    from ..models import corpus

    texts = [corpus.brown_text(start=10 + 7 * i, count=3) for i in range(8)]
    feeds = minilm.encode(texts, 512)
    rows = []
    for label, src in (
        ("fp32 (dynamo export)", export("minilm", console=console)),
        ("int8 (third-party file)", minilm.int8_path()),
    ):
        dst = out_dir / f"minilm-{'int8' if 'int8' in label else 'fp32'}.knn.onnx"
        rewrite(src, dst, RewriteOptions(attributes=attrs))
        base = ort.InferenceSession(str(src), _plain(threads)).run(None, feeds)[0]
        ours = ort.InferenceSession(str(dst), session_options(threads)).run(None, feeds)[0]
        cos = np.sum(minilm.embed(base, feeds["attention_mask"]) * minilm.embed(ours, feeds["attention_mask"]), -1)
        rows.append(
            {
                "model": label,
                "tokens": 512,
                "texts": len(texts),
                "cos_min": float(cos.min()),
                "cos_mean": float(cos.mean()),
            }
        )
        console.log(f"MiniLM {label}: embedding cosine min {cos.min():.6f}, mean {cos.mean():.6f}")
    return rows


def _plots(result: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if result.get("layers"):
        L = result["layers"]
        nl, nh = max(r["layer"] for r in L) + 1, max(r["head"] for r in L) + 1
        fig, axes = plt.subplots(1, 3, figsize=(15, 5))
        for ax, key, title in zip(
            axes, ("recall", "mass", "rel_err"), ("recall@k", "attention mass captured", "relative output error")
        ):
            grid = np.zeros((nl, nh))
            for r in L:
                grid[r["layer"], r["head"]] = r[key]
            im = ax.imshow(grid, aspect="auto", cmap="viridis")
            ax.set(title=title, xlabel="query head", ylabel="layer")
            fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(out / "eval_layers.png", dpi=110)
        plt.close(fig)
        written.append(str(out / "eval_layers.png"))
    if result.get("lm") or result.get("lines"):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for which, marker in (("text", "o"), ("repeat", "s")):
            rows = [r for r in result.get("lm", []) if r["input"] == which]
            if rows:
                axes[0].plot(
                    [r["tokens"] for r in rows],
                    [100 * r["ppl_change"] for r in rows],
                    marker=marker,
                    label=f"{which}: perplexity change %",
                )
                axes[0].plot(
                    [r["tokens"] for r in rows],
                    [100 * (1 - r["agreement"]) for r in rows],
                    marker=marker,
                    ls="--",
                    label=f"{which}: disagreement %",
                )
        axes[0].set(xscale="log", xlabel="tokens", title="SmolLM2: rewritten vs dense")
        axes[0].legend()
        rows = result.get("lines", [])
        if rows:
            x = np.arange(len(rows))
            axes[1].bar(x - 0.2, [r["token_acc_dense"] for r in rows], 0.4, label="dense")
            axes[1].bar(x + 0.2, [r["token_acc_knn"] for r in rows], 0.4, label="rewritten")
            axes[1].set(
                xticks=x,
                xticklabels=[str(r["tokens"]) for r in rows],
                xlabel="tokens",
                title="line retrieval: answer-token accuracy",
            )
            axes[1].legend()
        fig.tight_layout()
        fig.savefig(out / "eval_lm.png", dpi=110)
        plt.close(fig)
        written.append(str(out / "eval_lm.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="ice-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--attrs", type=json.loads, default={}, help="KnnAttention attributes (JSON) of the rewrite")
    ap.add_argument("--tokens", type=int, nargs="*", default=[4096])
    ap.add_argument("--lines", type=int, nargs="*", default=[])
    ap.add_argument("--questions", type=int, default=5)
    ap.add_argument("--layers", type=int, default=0, help="per layer/head metrics at this many tokens (0: off)")
    ap.add_argument("--minilm", action="store_true")
    ap.add_argument("--memory", type=int, default=0, help="peak RSS of a prefill of this many tokens (0: off)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("ice-eval-out"))
    args = ap.parse_args(argv)
    for name in args.attrs:
        contract.attribute(name)
    console = Console(width=160)
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"attrs": args.attrs, "threads": args.threads}
    lm_head = tok = sessions = None
    if args.tokens or args.lines or args.memory:
        src = export_smollm2(console=console)
        dst = cache_dir("eval") / "smollm2.knn.onnx"
        with console.status("ice-rewrite"):
            rewrite(src, dst, RewriteOptions(attributes=args.attrs))
        lm_head = np.load(src.parent / "lm_head.npy")
        tok = metrics.tokenizer()
        sessions = {
            "dense": ort.InferenceSession(str(src), _plain(args.threads)),
            "knn": ort.InferenceSession(str(dst), session_options(args.threads)),
        }
    if args.tokens:
        result["lm"] = eval_lm(sessions, lm_head, tok, args.tokens, console)
    if args.lines:
        result["lines"] = eval_lines(sessions, lm_head, tok, args.lines, args.questions, console)
    if args.memory:
        sessions = None  # the probes run in child processes
        ids = metrics.text_ids(tok, args.memory)
        with console.status(f"peak memory at {args.memory} tokens (two child processes)"):
            dense = peak_rss_mib(str(src), metrics.feeds(ids), args.threads, with_library=False)
            ours = peak_rss_mib(str(dst), metrics.feeds(ids), args.threads, with_library=True)
        result["memory"] = {"tokens": args.memory, "dense_mib": dense, "knn_mib": ours, "ratio": ours / dense}
        console.log(
            f"peak RSS at {args.memory} tokens: original {dense:.0f} MiB, rewritten {ours:.0f} MiB ({100 * ours / dense:.0f}%)"
        )
    if args.layers:
        result["layers"] = eval_layers(args.layers, args.attrs, args.threads, console)
    if args.minilm:
        result["minilm"] = eval_minilm(args.attrs, args.threads, cache_dir("eval"), console)

    _print_tables(result, console)
    (args.out / "eval.json").write_text(json.dumps(result, indent=1))
    for f in _plots(result, args.out) + [str(args.out / "eval.json")]:
        console.print(f"wrote {f}", markup=False, highlight=False)
    return 0


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="right")
    for row in rows:
        t.add_row(*row)
    return t


def _print_tables(result: dict, console) -> None:
    if result.get("lm"):
        title = f"SmolLM2-135M, rewritten with {json.dumps(result['attrs'])} vs dense, {result['threads']} threads"
        columns = ["tokens", "input", "ppl dense", "ppl rewritten", "change", "next-token agreement"]
        columns += ["dense s", "rewritten s", "speedup"]
        rows = [
            [
                str(r["tokens"]),
                r["input"],
                f"{r['ppl_dense']:.3f}",
                f"{r['ppl_knn']:.3f}",
                f"{100 * r['ppl_change']:+.2f}%",
                f"{100 * r['agreement']:.2f}%",
                f"{r['dense_s']:.2f}",
                f"{r['knn_s']:.2f}",
                f"{r['dense_s'] / r['knn_s']:.2f}x",
            ]
            for r in result["lm"]
        ]
        console.print(_table(title, columns, rows))
    if result.get("lines"):
        columns = ["tokens", "questions", "exact dense", "exact rewritten", "answer tokens dense"]
        columns.append("answer tokens rewritten")
        rows = [
            [
                str(r["tokens"]),
                str(r["questions"]),
                f"{r['exact_dense']:.2f}",
                f"{r['exact_knn']:.2f}",
                f"{r['token_acc_dense']:.3f}",
                f"{r['token_acc_knn']:.3f}",
            ]
            for r in result["lines"]
        ]
        console.print(_table("line retrieval (LongEval style)", columns, rows))
    if result.get("layers"):
        L = result["layers"]
        rows = []
        for li in sorted({r["layer"] for r in L}):
            rs = [r for r in L if r["layer"] == li]
            rows.append(
                [
                    str(li),
                    f"{np.mean([r['recall'] for r in rs]):.3f} ({min(r['recall'] for r in rs):.3f})",
                    f"{np.mean([r['mass'] for r in rs]):.3f} ({min(r['mass'] for r in rs):.3f})",
                    f"{np.mean([r['rel_err'] for r in rs]):.4f} ({max(r['rel_err'] for r in rs):.4f})",
                ]
            )
        title = "per layer (mean over query heads; worst head in brackets)"
        console.print(_table(title, ["layer", "recall@k", "mass captured", "rel. error"], rows))


if __name__ == "__main__":
    raise SystemExit(main())
