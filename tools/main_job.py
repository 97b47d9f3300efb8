"""The main job: a real pretrained model, exported, rewritten and run in onnxruntime.

SmolLM2-135M-Instruct is exported to ONNX (cached), rewritten by ice-rewrite twice (the op's default attributes,
which run exact attention below 8192 keys, and the k-NN path forced on from 1024 keys), and run on real text
(the Brown Corpus) against the original model, same process, same threads:
- plain text of N tokens: prefill time and speedup, perplexity, greedy next-token agreement with the original;
- the repeat test (N/2 tokens twice; perplexity on the second copy, which needs attention N/2 tokens back).

  ice-main [--tokens 4096] [--threads 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from ..models import corpus, export_smollm2, smollm2
from ..models._cache import cache_dir
from ..ops import session_options
from ..rewriter import RewriteOptions, rewrite
from . import lm_eval
from .lm_eval import perplexity


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ice-main", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="folder for the exported and rewritten models")
    args = ap.parse_args(argv)
    console = Console(width=170)
    out = args.out or cache_dir("main-job")
    model_path = export_smollm2(args.out, console=console)
    out.mkdir(parents=True, exist_ok=True)
    variants = {"original (ONNX Runtime dense)": (model_path, None)}
    for label, attrs in (("rewritten, default attributes", {}), ("rewritten, k-NN from 1024 keys", {"min_keys": 1024})):
        dst = out / ("smollm2.knn.onnx" if not attrs else "smollm2.knn1024.onnx")
        with console.status(f"ice-rewrite -> {dst.name}"):  # a few seconds; never a stale cached rewrite
            report = rewrite(model_path, dst, RewriteOptions(attributes=attrs))
        bypassed = sum(r.bypassed for r in report.replaced)
        console.print(f"{dst.name}: {len(report.replaced)} attention cores replaced {report.replaced_by_form}, "
                      f"{bypassed} masks bypassed (key_padding_mask + is_causal)")
        variants[label] = (dst, attrs)

    with console.status("tokenising Brown Corpus text"):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(smollm2.hf_dir())
        tok.add_bos_token = False
        n = args.tokens
        text_ids = tok(corpus.brown_text(start=100, count=60)).input_ids[:n]
        half = tok(corpus.brown_text(start=300, count=30)).input_ids[: n // 2]
    lm_head = np.load(model_path.parent / "lm_head.npy")
    stats_path = os.path.join(tempfile.mkdtemp(prefix="ice-main-"), "stats.jsonl")
    os.environ["ICEFORMER_STATS"] = stats_path

    sessions = {}
    for label, (path, attrs) in variants.items():
        if attrs is None:
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
        else:
            so = session_options(args.threads)
        sessions[label] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    table = Table(title=f"SmolLM2-135M prefill, {n} tokens of Brown Corpus text, {args.threads} threads")
    for col in ["input", "model", "prefill s", "speedup", "perplexity", "vs original", "next-token agreement"]:
        table.add_column(col, justify="right")
    op_stats = {}
    for which, ids in (("text", text_ids), ("repeat", half + half)):
        feeds = lm_eval.feeds(ids)
        outputs, times = {}, {}
        for label, sess in sessions.items():
            with console.status(f"{which}: {label}"):
                open(stats_path, "w").close()
                outputs[label] = sess.run(None, feeds)[0][0]  # first run: warms the session up
                if label != "original (ONNX Runtime dense)":
                    lines = [json.loads(x) for x in open(stats_path).read().splitlines()]
                    op_stats[(which, label)] = lines
                t0 = time.perf_counter()
                sess.run(None, feeds)
                times[label] = time.perf_counter() - t0
        start = len(ids) // 2 if which == "repeat" else 0
        base_ppl, base_pred = perplexity(outputs["original (ONNX Runtime dense)"], lm_head, ids, start)
        base_t = times["original (ONNX Runtime dense)"]
        for label in sessions:
            ppl, pred = perplexity(outputs[label], lm_head, ids, start)
            table.add_row(which, label, f"{times[label]:.2f}", f"{base_t / times[label]:.2f}x", f"{ppl:.3f}",
                          f"{100 * (ppl / base_ppl - 1):+.2f}%", f"{100 * np.mean(pred == base_pred):.2f}%")
    console.print(table)
    for (which, label), lines in op_stats.items():
        knn = [x for x in lines if x["path"] == "knn"]
        console.print(
            f"op statistics, {which}, {label}: {len(lines)} calls, paths {sorted({x['path'] for x in lines})}"
            + (f"; k-NN rows {sum(x['knn_rows'] for x in knn)}, of which sent back to exact "
               f"{sum(x['fallback_rows'] for x in knn)}; keys scored per k-NN row "
               f"{np.mean([x['mean_candidates'] for x in knn]):.0f}" if knn else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
