"""The main job: a real pretrained model, exported, rewritten and run in onnxruntime.

The decoder (SmolLM2-135M-Instruct at 4096 tokens by default; Qwen2.5-Coder-0.5B-Instruct for prompts up to 32k)
is exported to ONNX (cached), rewritten by ice-rewrite twice (the op's default attributes, which run exact
attention below 4096 keys, and the k-NN path forced on from 1024 keys), and run on real text (the Brown Corpus)
against the original model, same threads, each model in its own process (its peak memory is its own):
- plain text of N tokens: prefill time and speedup, peak memory, perplexity, greedy next-token agreement with
  the original;
- the repeat test (N/2 tokens twice; perplexity on the second copy, which needs attention N/2 tokens back).
When the original's attention scores ([Hq, S, S] fp32 per layer) would not fit in memory (Qwen at 16k: 15 GB),
the reference is the same export rewritten with exact attention (top_k 0), and the table says so.

With --calibrate, a fourth variant: the default rewrite calibrated per layer by ice-calibrate at the same length
on other text of the corpus (budget 2% relative output error per layer).

  ice-main [--model smollm2|qwen2.5-coder-0.5b] [--tokens 4096] [--threads 2] [--out DIR] [--calibrate [--no-per-head]]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from .. import metrics
from ..metrics import perplexity
from ..models import export
from ..models._cache import cache_dir
from ..models.export import DECODERS, decoder
from ..ops import get_library_path
from ..rewriter import RewriteOptions, rewrite
from .calibrate import TEXT_START as calibrate_text
from .calibrate import calibrate
from .e2e_worker import Worker

KNN_FORCED = {"min_keys": 1024}
CALIBRATION_BUDGET = 0.02


def _dense_fits(model: str, n: int) -> bool:
    """Whether the original's [Hq, S, S] fp32 scores (about three live at once) fit in half the available memory."""
    cfg = json.loads((decoder(model).hf_dir() / "config.json").read_text())
    need = 3 * cfg["num_attention_heads"] * n * n * 4
    avail = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemAvailable:")
    )  # free + reclaimable page cache
    return need < avail / 2


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="ice-main", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", choices=list(DECODERS), default="smollm2")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="folder for the exported and rewritten models")
    ap.add_argument("--calibrate", action="store_true", help="add the default rewrite calibrated by ice-calibrate")
    ap.add_argument(
        "--per-head",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --calibrate: per query head settings too (ice-calibrate's default; --no-per-head: per layer only)",
    )
    ap.add_argument("--inputs", nargs="+", choices=["text", "repeat"], default=["text", "repeat"])
    return ap.parse_args(argv)


def _variants(args, model_path: Path, out: Path, ref: str, dense: bool, console: Console) -> dict:
    """label -> (model path, attributes; None: the original): the reference, the rewrites, the calibrated one."""
    plan = {  # label -> (file stem suffix, attributes; None: the original, not rewritten)
        ref: (None, None) if dense else ("exact", {"top_k": 0}),
        "rewritten, default attributes": ("knn", {}),
        "rewritten, k-NN from 1024 keys": ("knn1024", KNN_FORCED),
    }
    variants = {}
    for label, (suffix, attrs) in plan.items():
        if attrs is None:
            variants[label] = (model_path, None)
            continue
        dst = out / f"{args.model}.{suffix}.onnx"
        with console.status(f"ice-rewrite -> {dst.name}"):  # seconds; never a stale cached rewrite
            report = rewrite(model_path, dst, RewriteOptions(attributes=attrs))
        bypassed = sum(r.bypassed for r in report.replaced)
        console.print(
            f"{dst.name}: {len(report.replaced)} attention cores replaced {report.replaced_by_form}, "
            f"{bypassed} masks bypassed (key_padding_mask + is_causal)"
        )
        variants[label] = (dst, attrs)
    if args.calibrate:
        dst = out / f"{args.model}.calibrated.onnx"
        tok = metrics.tokenizer(args.model)
        report = calibrate(
            variants["rewritten, default attributes"][0],
            dst,
            metrics.text_ids(tok, args.tokens, start=calibrate_text),
            CALIBRATION_BUDGET,
            args.threads,
            console=console,
            per_head=args.per_head,
        )
        changed = sum(r.chosen != {} for r in report.cores)
        console.print(
            f"{dst.name}: {changed} of {len(report.cores)} cores changed from the defaults: "
            + ", ".join(f"{r.core}:{json.dumps(r.chosen)}" for r in report.cores if r.chosen)
        )
        variants["rewritten, calibrated"] = (dst, report.cores[0].chosen)
    return variants


def _run(args, variants: dict, inputs: dict, lm_head: np.ndarray, tmp: Path, console: Console):
    """Every variant on every input, interleaved: {input: {label: (seconds, peak MiB, perplexity, predictions)}},
    and the op's statistics lines per (input, label)."""
    stats_path = tmp / "stats.jsonl"
    os.environ["ICEFORMER_STATS"] = str(stats_path)  # the workers inherit it; the op appends one line per call
    workers = {}
    for label, (path, attrs) in variants.items():
        with console.status(f"loading {label}"):
            spec = {"threads": args.threads, "model": str(path)}
            if attrs is not None:
                spec["library"] = str(get_library_path())
            workers[label] = Worker(sys.executable, "onnx", spec)
            workers[label](next(iter(inputs.values()))[:256])  # warm-up (session init, arena) on a short prompt
    results, op_stats = {}, {}
    try:
        for which, ids in inputs.items():
            results[which] = {}
            for label, worker in workers.items():
                with console.status(f"{which}: {label}"):
                    stats_path.write_text("")
                    ans = worker(ids, 0, str(tmp / "hidden.npy"))
                    if "error" in ans:
                        raise RuntimeError(f"{label}: {ans['error']}")
                    if variants[label][1] is not None:
                        op_stats[(which, label)] = [json.loads(x) for x in stats_path.read_text().splitlines()]
                    start = len(ids) // 2 if which == "repeat" else 0
                    ppl, pred = perplexity(np.load(tmp / "hidden.npy"), lm_head, ids, start)
                    results[which][label] = (ans["ttft_s"], ans["peak_rss_mib"], ppl, pred)
    finally:
        for w in workers.values():
            w.close()
    return results, op_stats


def _report(args, results: dict, op_stats: dict, ref: str, console: Console) -> None:
    table = Table(title=f"{args.model} prefill, {args.tokens} tokens of Brown Corpus text, {args.threads} threads")
    for col in [
        "input",
        "model",
        "prefill s",
        "speedup",
        "peak MiB",
        "perplexity",
        "vs reference",
        "next-token agreement",
    ]:
        table.add_column(col, justify="right")
    for which, by_label in results.items():
        base_t, _, base_ppl, base_pred = by_label[ref]
        for label, (t, peak, ppl, pred) in by_label.items():
            table.add_row(
                which,
                label,
                f"{t:.2f}",
                f"{base_t / t:.2f}x",
                f"{peak:.0f}",
                f"{ppl:.3f}",
                f"{100 * (ppl / base_ppl - 1):+.2f}%",
                f"{100 * np.mean(pred == base_pred):.2f}%",
            )
    console.print(table)
    for (which, label), lines in op_stats.items():
        knn = [x for x in lines if x["path"] == "knn"]
        console.print(
            f"op statistics, {which}, {label}: {len(lines)} calls, paths {sorted({x['path'] for x in lines})}"
            + (
                f"; k-NN rows {sum(x['knn_rows'] for x in knn)}, of which sent back to exact "
                f"{sum(x['fallback_rows'] for x in knn)}; keys scored per k-NN row "
                f"{np.mean([x['mean_candidates'] for x in knn]):.0f}"
                if knn
                else ""
            )
        )


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    console = Console(width=170)
    out = args.out or cache_dir("main-job")
    model_path = export(args.model, args.out, console=console)
    out.mkdir(parents=True, exist_ok=True)
    dense = _dense_fits(args.model, args.tokens)
    ref = "original (ONNX Runtime dense)" if dense else "rewritten, exact attention (reference)"
    variants = _variants(args, model_path, out, ref, dense, console)
    if not dense:
        console.print(
            f"the original's attention scores at {args.tokens} tokens would not fit in memory: the reference is "
            f"the rewritten model with exact attention (equal to ONNX Runtime's to ~1e-5)"
        )
    with console.status("tokenising Brown Corpus text"):
        tok = metrics.tokenizer(args.model)
        all_inputs = {"text": metrics.text_ids(tok, args.tokens), "repeat": metrics.repeat_ids(tok, args.tokens)}
    inputs = {which: ids for which, ids in all_inputs.items() if which in args.inputs}
    lm_head = np.load(model_path.parent / "lm_head.npy")
    scratch = tempfile.TemporaryDirectory(prefix="ice-main-")  # rewritten models etc.: removed when the run ends
    results, op_stats = _run(args, variants, inputs, lm_head, Path(scratch.name), console)
    _report(args, results, op_stats, ref, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
