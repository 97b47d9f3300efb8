"""ice-bench-e2e: long prompts end to end on a real decoder, iceformer against the runtimes CPU users pick.

Every runtime gets the same prompt ids (retrieval prompts over Brown Corpus text, iceformer.metrics), the same
threads, and runs in its own worker process, loaded for its turn (warmed up on a short prompt, outside the
timing) and closed after it, so its peak memory is its own from a fresh start (--resident keeps all loaded); the
runtimes take turns prompt by prompt (interleaved). Per prompt length, one table:
- time to first token (the prefill; for the ONNX exports one run over the prompt), median over the prompts, and
  the speedup against the fastest peer (onnxruntime-genai, OpenVINO GenAI) with the same weight format;
- peak resident memory of the runtime's process during the prompt (weights included), max over the prompts;
- retrieval: answers that greedy generation gets right (teacher forcing for the ONNX exports, see iceformer.metrics);
- decode of the generating runtimes (genai, OpenVINO): greedy tokens per second after the first, and ms per token
  (median over the steps, p90 in brackets; OpenVINO reports only its mean), medians over the prompts (--new-tokens
  sets how many), and whether the tokens equal those of onnxruntime-genai with the same weights;
- against dense attention (`onnx-dense`, the export without iceformer, up to --dense-max tokens; above it our
  exact path `ours-exact`): perplexity change over the prompt and next-token agreement where the runtime
  exposes every position's hidden state; for generating runtimes, whether the first generated token is dense's;
- with --score-tokens N, generation's accuracy: a Brown text of n + N tokens, its last N fed to the genai runtimes
  one decode step at a time (teacher forcing) and scored from each step's logits: their perplexity, its change
  against onnxruntime-genai with the same weights (dense attention) and how often the greedy predictions agree.

Runtimes (--runtimes); activations and attention are fp32 everywhere:
  ours-exact, ours-defaults, ours-knn   the eager ONNX export (fp32) rewritten by ice-rewrite: exact (top_k 0),
                                        the op's defaults, k-NN forced from --knn-min-keys keys
  onnx-dense                            the same export without iceformer (ONNX Runtime's own kernels)
  genai, genai-ours, genai-ours-knn     onnxruntime-genai: the folder in the builder's form (GroupQueryAttention),
                                        and that folder rewritten by ice-rewrite (defaults; k-NN forced)
  genai-ours-cal, genai-int4-ours-cal   the rewritten folder calibrated by ice-calibrate at the largest --tokens
                                        (--calibrate-budget; other text than the prompts')
  genai-int4, genai-int4-ours, ...      the same with int4 weights (MatMulNBits, blocks of 32, as `-p int4`);
                                        --genai-folder uses a folder you built (genai's model builder) instead
  ov-dense, ov-xattention               OpenVINO GenAI (PagedAttention), dense and XAttention sparse prefill,
  ov-int8-*, ov-int4-*                  fp32 / int8 / int4 weights (optimum-cli --weight-format), f32 inference
                                        precision and KV cache: needs --ov-python, a Python with openvino-genai
                                        and optimum-intel (their own environment: they need transformers 5)
Writes --json, and beside it the tables as markdown (.md) and time against length (.png).

  ice-bench-e2e --model qwen2.5-coder-0.5b --tokens 4096 8192 16384 --ov-python /opt/ov/bin/python
  ice-bench-e2e --model smollm2 --tokens 4096 8192 --runtimes genai genai-ours genai-ours-knn \
      --genai-folder smollm2-genai --new-tokens 32     # a builder-made folder against its rewritten copies
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ..ops import contract
from .e2e_worker import Worker

ONNX_RUNTIMES = {"ours-exact": {"top_k": 0}, "ours-defaults": {}, "ours-knn": "knn", "onnx-dense": None}
# genai runtime -> (weight precision, None: the folder as written | attributes of the rewrite | "knn")
GENAI_RUNTIMES = {
    f"genai{w}{v}": (p, a)
    for w, p in (("", "fp32"), ("-int4", "int4"))
    for v, a in (("", None), ("-ours", {}), ("-ours-knn", "knn"), ("-ours-cal", "cal"))
}
# OpenVINO runtime -> (weight format of optimum-cli, sparse prefill mode or None)
OV_RUNTIMES = {
    f"ov{w}-{m}": (f, None if m == "dense" else m)
    for w, f in (("", "fp32"), ("-int8", "int8"), ("-int4", "int4"))
    for m in ("dense", "xattention")
}
GENAI_MAX_LENGTH = 32768  # rotary rows of the genai folder: prompt + generated tokens must fit


@dataclass
class Record:
    tokens: int
    runtime: str
    prompt: str  # "passkey@0.50" / "lines@0.50"
    ttft_s: float | None = None
    peak_rss_mib: float | None = None
    correct: bool | None = None
    ppl_change: float | None = None  # against the dense reference, over the prompt
    agreement: float | None = None  # greedy next-token agreement with the dense reference, over the prompt
    first_same: bool | None = None  # first generated token equals the dense reference's
    error: str | None = None
    decode_tok_s: float | None = None  # generating runtimes: greedy tokens per second after the first
    decode_ms: float | None = None  # median ms per generated token after the first (OpenVINO: its mean)
    decode_p90_ms: float | None = None
    generated: list[int] | None = None  # the greedy tokens
    same_as_peer: bool | None = None  # generated tokens equal those of the peer with the same weights (genai)
    decode_ppl: float | None = None  # --score-tokens: perplexity of the continuation scored step by step
    decode_ppl_change: float | None = None  # ... against the peer with the same weights (genai)
    decode_agreement: float | None = None  # ... greedy predictions equal to the peer's, per step
    nll: list[float] | None = None  # ... per step
    preds: list[int] | None = None  # ... per step


def _is_scoring(r: Record) -> bool:
    """A --score-tokens record (a text scored step by step, not a retrieval prompt)."""
    return r.prompt.startswith("text+")


def _is_peer(runtime: str) -> bool:
    return runtime.startswith(("genai", "ov")) and "ours" not in runtime


def _weights(runtime: str) -> str:
    """The weight format a runtime computes with (speedups compare runtimes of one format)."""
    return "int4" if "int4" in runtime else "int8" if "int8" in runtime else "fp32"


def _prepare(args, console: Console, tmp: Path) -> dict[str, tuple[str, str, dict]]:
    """{runtime: (python, kind, spec)}: exports, rewrites and conversions (cached where they can be)."""
    import sys

    from ..models import export
    from ..ops import get_library_path
    from ..rewriter import RewriteOptions, rewrite

    knn = {"min_keys": args.knn_min_keys, **dict(args.knn_attr)}
    out: dict[str, tuple[str, str, dict]] = {}
    base = {"threads": args.threads}
    wanted = args.runtimes
    if any(r in ONNX_RUNTIMES for r in wanted):
        model = export(args.model, console=console)
        for r in (r for r in wanted if r in ONNX_RUNTIMES):
            if r == "onnx-dense":
                out[r] = (sys.executable, "onnx", {**base, "model": str(model)})
                continue
            attrs = knn if ONNX_RUNTIMES[r] == "knn" else ONNX_RUNTIMES[r]
            dst = tmp / f"{r}.onnx"
            with console.status(f"ice-rewrite -> {r}"):
                rewrite(model, dst, RewriteOptions(attributes=attrs))
            out[r] = (sys.executable, "onnx", {**base, "model": str(dst), "library": str(get_library_path())})
    for r in (r for r in wanted if r in GENAI_RUNTIMES):
        precision, attrs = GENAI_RUNTIMES[r]
        folder = _genai_folder(args, precision, console, tmp)
        if attrs is not None:
            dst, folder = folder, tmp / r
            with console.status(f"ice-rewrite -> {r}"):
                rewrite(
                    dst, folder, RewriteOptions(attributes=knn if attrs == "knn" else {} if attrs == "cal" else attrs)
                )
            if attrs == "cal":
                folder = _calibrated(args, folder, console)
        out[r] = (sys.executable, "genai", {**base, "model": str(folder)})
    for r in (r for r in wanted if r in OV_RUNTIMES):
        if not args.ov_python:
            raise SystemExit(
                "ice-bench-e2e: the OpenVINO runtimes need --ov-python (an environment with "
                "openvino-genai and optimum-intel; see the README)"
            )
        fmt, sparse = OV_RUNTIMES[r]
        out[r] = (
            args.ov_python,
            "openvino",
            {**base, "model": str(_openvino_model(args, fmt, console)), "sparse": sparse},
        )
    return out


def _genai_folder(args, precision: str, console: Console, tmp: Path) -> Path:
    """The model's genai folder: --genai-folder (e.g. built by genai's model builder; int4 quantised from it here),
    else ice-export's (cached)."""
    from ..models import export_genai
    from ..models.genai_form import quantize_int4

    if args.genai_folder is None:
        return export_genai(args.model, max_length=GENAI_MAX_LENGTH, precision=precision, console=console)
    if precision == "fp32":
        return args.genai_folder
    dst = tmp / "genai-int4"
    if not dst.exists():
        with console.status("int4 weights of --genai-folder"):
            quantize_int4(args.genai_folder, dst)
    return dst


def _calibrated(args, folder: Path, console: Console) -> Path:
    """ice-calibrate of a rewritten genai folder at the largest --tokens (its report beside --json)."""
    from ..metrics import text_ids, tokenizer
    from .calibrate import TEXT_START, calibrate

    n = max(args.tokens)
    out = folder.with_name(folder.name + "-calibrated")
    ids = text_ids(tokenizer(args.model), n, start=TEXT_START)
    report = calibrate(folder, out, ids, args.calibrate_budget, args.threads, console=console)
    args.json.with_suffix(".calibration.json").write_text(json.dumps(report.to_dict(), indent=1))
    return out


def _openvino_model(args, weight_format: str, console: Console) -> Path:
    """The model converted by optimum-intel's CLI with --weight-format (fp32, int8 or int4), cached."""
    from ..models._cache import cache_dir
    from ..models.export import _fill_cache, decoder

    cached = cache_dir("exports", f"{args.model}-openvino-{weight_format}")
    if (cached / "openvino_model.xml").is_file():
        return cached
    hf = decoder(args.model).hf_dir()
    cli = Path(args.ov_python).with_name("optimum-cli")

    def build(tmp: Path) -> None:
        with console.status(f"optimum-cli export openvino ({weight_format}; a few minutes)"):
            res = subprocess.run(
                [
                    str(cli),
                    "export",
                    "openvino",
                    "--model",
                    str(hf),
                    "--task",
                    "text-generation-with-past",
                    "--weight-format",
                    weight_format,
                    str(tmp),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
        if res.returncode != 0:
            raise RuntimeError(f"optimum-cli export openvino failed: {res.stderr.strip()[-800:]}")

    _fill_cache(cached, build)
    return cached


def _prompts(tok, n: int, args) -> list:
    from .. import metrics

    ps = [metrics.passkey_prompt(tok, n, d, seed=i) for i, d in enumerate(args.passkey_depths)]
    ps += [metrics.line_prompt(tok, n, seed=100 + i, depth=d) for i, d in enumerate(args.line_depths)]
    return ps


def _score_hidden(rec: Record, hidden: np.ndarray, p, lm_head: np.ndarray, ref: dict | None) -> dict:
    """Metrics from an ONNX export's hidden states of p.ids; returns this run's perplexity, predictions and first
    token for use as the reference."""
    from .. import metrics

    forced = metrics.forced_predictions(hidden, lm_head, p)  # [0]: the greedy first token after the prompt
    rec.correct = bool(np.array_equal(forced, np.asarray(p.answer)))
    total, count, preds = metrics.logits_stats(hidden[: len(p.prompt)], lm_head, p.prompt, 0)
    mine = {"ppl": float(np.exp(total / count)), "preds": preds, "first": int(forced[0])}
    if ref is not None:
        rec.ppl_change = mine["ppl"] / ref["ppl"] - 1
        rec.agreement = float(np.mean(preds == ref["preds"]))
        rec.first_same = mine["first"] == ref["first"]
    return mine


COLUMNS = [
    "runtime",
    "first token s",
    "speedup",
    "peak MiB",
    "retrieval",
    "perplexity",
    "agreement",
    "first token = dense",
    "decode tok/s",
    "decode ms/token (p90)",
    "tokens = peer's",
    "decode ppl (vs peer, agreement)",
]


def summary(records: list[Record], n: int) -> tuple[list[list[str]], dict[str, str]]:
    """The rows (COLUMNS) of the table at prompt length n, and {weight format: its fastest peer}."""
    rows = [r for r in records if r.tokens == n and not _is_scoring(r)]
    scored = [r for r in records if r.tokens == n and _is_scoring(r) and r.error is None]
    # a run may only score (--score-tokens without prompts): its runtimes get rows too
    by = {rt: [r for r in rows if r.runtime == rt] for rt in dict.fromkeys(r.runtime for r in rows + scored)}
    med = {
        rt: statistics.median(x.ttft_s for x in rs if x.ttft_s is not None)
        for rt, rs in by.items()
        if any(x.ttft_s is not None for x in rs)
    }
    best: dict[str, str] = {}  # weight format -> the fastest peer computing with it
    for rt, sec in med.items():
        w = _weights(rt)
        if _is_peer(rt) and (w not in best or sec < med[best[w]]):
            best[w] = rt
    fmt = lambda xs, f: f(xs) if xs else "-"  # noqa: E731
    out = []
    for rt, rs in by.items():
        ok = [r for r in rs if r.error is None]
        out.append(
            [
                rt,
                f"{med[rt]:.2f}" if rt in med else "-",
                f"{med[best[_weights(rt)]] / med[rt]:.2f}x" if _weights(rt) in best and rt in med else "-",
                fmt([r.peak_rss_mib for r in ok], lambda v: f"{max(v):.0f}"),
                f"{sum(bool(r.correct) for r in ok)}/{len(rs)}" if rs else "-",
                fmt(
                    [r.ppl_change for r in ok if r.ppl_change is not None],
                    lambda v: f"{100 * statistics.mean(v):+.2f}%",
                ),
                fmt([r.agreement for r in ok if r.agreement is not None], lambda v: f"{100 * statistics.mean(v):.2f}%"),
                fmt([r.first_same for r in ok if r.first_same is not None], lambda v: f"{sum(v)}/{len(v)}"),
                fmt(
                    [r.decode_tok_s for r in ok if r.decode_tok_s is not None], lambda v: f"{statistics.median(v):.1f}"
                ),
                fmt(
                    [r for r in ok if r.decode_ms is not None],
                    lambda v: (
                        f"{statistics.median(r.decode_ms for r in v):.1f}"
                        + (
                            f" ({statistics.median(r.decode_p90_ms for r in v):.1f})"
                            if all(r.decode_p90_ms is not None for r in v)
                            else ""
                        )
                    ),
                ),
                fmt([r.same_as_peer for r in ok if r.same_as_peer is not None], lambda v: f"{sum(v)}/{len(v)}"),
                fmt([r for r in scored if r.runtime == rt], _decode_ppl),
            ]
        )
    return out, best


def _decode_ppl(rs: list[Record]) -> str:
    """The --score-tokens cell: perplexity (change against the peer, agreement with it), means over the texts."""
    ppl = f"{statistics.mean(r.decode_ppl for r in rs):.3f}"
    vs = [r for r in rs if r.decode_ppl_change is not None]
    if not vs:
        return ppl
    change = 100 * statistics.mean(r.decode_ppl_change for r in vs)
    return f"{ppl} ({change:+.2f}%, {100 * statistics.mean(r.decode_agreement for r in vs):.1f}%)"


def _table(records: list[Record], n: int, args) -> Table:
    rows, best = summary(records, n)
    peers = ", ".join(f"{w}: {rt}" for w, rt in best.items())
    t = Table(
        title=f"{args.model}, {n}-token prompts, {args.threads} threads, medians over "
        f"{len(args.passkey_depths) + len(args.line_depths)} prompts"
        + (f"; speedup against the fastest peer with the same weights ({peers})" if peers else "")
    )
    for col in COLUMNS:
        t.add_column(col, justify="right")
    for row in rows:
        t.add_row(*row)
    return t


def markdown(records: list[Record]) -> str:
    """Every length's table as one markdown table (a tokens column first), for the README."""
    lines = ["| tokens | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for n in sorted({r.tokens for r in records}):
        lines += [f"| {n} | " + " | ".join(row) + " |" for row in summary(records, n)[0]]
    return "\n".join(lines) + "\n"


def _plot(records: list[Record], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in records if r.ttft_s]
    if not timed:  # e.g. a run that only scored a text
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rt in dict.fromkeys(r.runtime for r in timed):
        pts = sorted({r.tokens for r in records if r.runtime == rt and r.ttft_s is not None})
        ys = [
            statistics.median(r.ttft_s for r in records if r.runtime == rt and r.tokens == n and r.ttft_s) for n in pts
        ]
        ax.plot(pts, ys, marker="o", label=rt, linestyle="-" if _is_peer(rt) else "--")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("time to first token, s")
    ax.set_title(f"{args.model}, {args.threads} threads (solid: peers, dashed: iceformer)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="ice-bench-e2e", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from ..models.export import DECODERS

    all_runtimes = [*ONNX_RUNTIMES, *GENAI_RUNTIMES, *OV_RUNTIMES]
    ap.add_argument("--model", choices=list(DECODERS), default="qwen2.5-coder-0.5b")
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument(
        "--runtimes",
        nargs="+",
        choices=all_runtimes,
        default=["ours-exact", "ours-defaults", "ours-knn", "onnx-dense", "genai", "genai-ours"],
    )
    ap.add_argument("--passkey-depths", type=float, nargs="*", default=[0.1, 0.5, 0.9])
    ap.add_argument("--line-depths", type=float, nargs="*", default=[0.5])
    ap.add_argument("--knn-min-keys", type=int, default=1024, help="k-NN forced from this many keys (ours-knn)")
    ap.add_argument(
        "--knn-attr",
        type=contract.parse_attribute,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="more attributes of the *-knn runtimes' rewrite (repeatable), e.g. decode_min_keys=1000000000 with "
        "--knn-min-keys 4096: the defaults with flash decoding only",
    )
    ap.add_argument(
        "--calibrate-budget",
        type=float,
        default=0.02,
        help="*-ours-cal: ice-calibrate's --budget (largest mean relative output error per node)",
    )
    ap.add_argument(
        "--new-tokens",
        type=int,
        default=0,
        help="greedy tokens the generating runtimes produce per prompt (0: the answer's length); "
        "more makes the decode tok/s column meaningful",
    )
    ap.add_argument(
        "--genai-folder",
        type=Path,
        help="the model's onnxruntime-genai folder to use for the genai runtimes (e.g. built by genai's model "
        "builder), instead of ice-export --form genai",
    )
    ap.add_argument(
        "--dense-max",
        type=int,
        default=8192,
        help="onnx-dense only up to this length (its [Hq, S, S] scores: 15 GB at 16k on Qwen)",
    )
    ap.add_argument(
        "--score-tokens",
        type=int,
        default=0,
        help="score this many tokens of a text continuing an n-token prompt step by step (genai runtimes): "
        "decode perplexity and agreement against genai with the same weights",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ov-python", help="python of an environment with openvino-genai and optimum-intel")
    ap.add_argument(
        "--resident",
        action="store_true",
        help="keep every runtime loaded for the whole run (faster; needs all their memory at once)",
    )
    ap.add_argument("--json", type=Path, default=Path("bench_e2e.json"))
    args = ap.parse_args(argv)
    if max(args.tokens) + max(16, args.new_tokens, args.score_tokens) > GENAI_MAX_LENGTH and any(
        r in GENAI_RUNTIMES for r in args.runtimes
    ):
        ap.error(f"genai folders hold {GENAI_MAX_LENGTH} positions: prompt + new tokens must fit")
    return args


class _Run:
    """The runtimes' workers and the shared inputs of one benchmark run."""

    def __init__(self, args, console: Console, tmp: Path):
        from .. import metrics
        from ..models import export

        self.args, self.console, self.tmp = args, console, tmp
        self.specs = _prepare(args, console, tmp)
        self.tok = metrics.tokenizer(args.model)
        self.lm_head = np.load(export(args.model).parent / "lm_head.npy")
        self.warm_ids = self.tok("Warm up the runtime with a short prompt.").input_ids * 8
        # Resident: every runtime loaded once (fast, but all their memory at once). Otherwise each runtime is loaded
        # for its turn and closed after it: one runtime in memory at a time, its peak measured from a fresh start.
        self.workers = {rt: self.start(rt) for rt in self.specs} if args.resident else {}

    def start(self, rt: str) -> Worker:
        python, kind, spec = self.specs[rt]
        with self.console.status(f"loading {rt}"):
            w = Worker(python, kind, spec)
            w(self.warm_ids, 2)  # session set-up and first-run costs stay out of the timings
        return w

    def close(self) -> None:
        for w in self.workers.values():
            if w is not None:
                w.close()

    def prompt(self, n: int, p) -> list[Record]:
        """Every runtime on prompt p (the dense reference first)."""
        from ..metrics import generated_correct

        label, ref, out = f"{p.kind}@{p.depth:.2f}", None, []
        order = sorted(self.specs, key=lambda rt: (rt not in ("onnx-dense", "ours-exact"), rt != "onnx-dense"))
        for rt in order:
            if rt == "onnx-dense" and n > self.args.dense_max:
                continue
            rec = Record(n, rt, label)
            hidden_path = str(self.tmp / "hidden.npy")
            is_onnx = self.specs[rt][1] == "onnx"
            new = max(len(p.answer), self.args.new_tokens)
            ans = self._ask(rt, p.ids if is_onnx else p.prompt, len(p.answer) if is_onnx else new, is_onnx, hidden_path)
            rec.error = ans.get("error")
            rec.ttft_s, rec.peak_rss_mib = ans.get("ttft_s"), ans.get("peak_rss_mib")
            if rec.error is None and is_onnx:
                mine = _score_hidden(rec, np.load(hidden_path), p, self.lm_head, ref)
                if ref is None and rt in ("onnx-dense", "ours-exact"):
                    ref = mine  # dense attention: the ONNX Runtime kernels, or above --dense-max our exact path
            elif rec.error is None:
                rec.correct = generated_correct(p, ans["tokens"])
                rec.first_same = ans["tokens"][:1] == [ref["first"]] if ref else None
                rec.decode_tok_s = ans.get("decode_tok_s")
                rec.decode_ms, rec.decode_p90_ms = ans.get("decode_ms"), ans.get("decode_p90_ms")
                rec.generated = ans["tokens"]
            out.append(rec)
            self.console.log(
                f"{n} {label} {rt}: "
                + (rec.error or f"{rec.ttft_s:.2f} s, {rec.peak_rss_mib:.0f} MiB, correct {rec.correct}")
            )
        peers = {_weights(r.runtime): r for r in out if _is_peer(r.runtime) and r.runtime.startswith("genai")}
        for r in out:
            peer = peers.get(_weights(r.runtime))
            if r.generated is not None and peer is not None and peer is not r and peer.generated is not None:
                r.same_as_peer = r.generated == peer.generated
        return out

    def score(self, n: int) -> list[Record]:
        """The genai runtimes on an n-token Brown text, its next --score-tokens tokens scored step by step."""
        from .. import metrics

        k = self.args.score_tokens
        ids = metrics.text_ids(self.tok, n + k, start=300)
        out = []
        for rt in (rt for rt in self.specs if rt in GENAI_RUNTIMES):
            rec = Record(n, rt, f"text+{k}")
            ans = self._ask(rt, ids[:n], 0, False, "", score=ids[n:])
            rec.error = ans.get("error")
            if rec.error is None:
                rec.nll, rec.preds = ans["score_nll"], ans["score_preds"]
                rec.decode_ppl = float(np.exp(np.mean(rec.nll)))
            out.append(rec)
            self.console.log(f"{n} text+{k} {rt}: " + (rec.error or f"decode perplexity {rec.decode_ppl:.3f}"))
        peers = {_weights(r.runtime): r for r in out if _is_peer(r.runtime) and r.error is None}
        for r in out:
            peer = peers.get(_weights(r.runtime))
            if r.error is None and peer is not None and peer is not r:
                r.decode_ppl_change = r.decode_ppl / peer.decode_ppl - 1
                r.decode_agreement = float(np.mean(np.asarray(r.preds) == np.asarray(peer.preds)))
        return out

    def _ask(
        self, rt: str, ids: list[int], new_tokens: int, is_onnx: bool, hidden_path: str, score: list[int] | None = None
    ) -> dict:
        worker = None
        try:
            worker = self.workers.get(rt) or self.start(rt)
            return worker(ids, new_tokens, hidden_path if is_onnx else None, score)
        except RuntimeError as e:  # the worker died (e.g. killed for memory): a failed record
            worker = None
            self.workers.pop(rt, None)
            return {"error": str(e)}
        finally:
            if worker is not None and not self.args.resident:
                worker.close()


def _report(records: list[Record], n: int, args, console: Console) -> None:
    console.print(_table(records, n, args))
    args.json.write_text(
        json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "records": [asdict(r) for r in records]},
            indent=1,
        )
    )
    args.json.with_suffix(".md").write_text(markdown(records))


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    console = Console(width=170)
    scratch = tempfile.TemporaryDirectory(prefix="ice-bench-e2e-")  # rewritten models etc.: removed when the run ends
    run = _Run(args, console, Path(scratch.name))
    records: list[Record] = []
    try:
        for n in args.tokens:
            for p in _prompts(run.tok, n, args):  # interleaved: every runtime on this prompt before the next
                records += run.prompt(n, p)
            if args.score_tokens:
                records += run.score(n)
            _report(records, n, args, console)
    finally:
        run.close()
    _plot(records, args.json.with_suffix(".png"), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
