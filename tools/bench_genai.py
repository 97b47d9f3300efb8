"""End to end through onnxruntime-genai: a genai model folder as its builder wrote it, against the same folder rewritten
by ice-rewrite (one or more attribute sets), on the same prompt ids (Brown Corpus text, SmolLM2's tokenizer), same
threads, variants interleaved per prompt.

Per prompt length: time to first token (the prefill: `append_tokens` of the whole prompt), decode tokens/s over the
next --new-tokens greedy tokens, and, against the original folder, the share of prompts whose first generated token
is the same and whose --new-tokens greedy tokens are all the same.

  python -m onnxruntime_genai.models.builder -i HF_DIR -o smollm2-genai -p fp32 -e cpu --extra_options prune_lm_head=true
  ice-bench-genai smollm2-genai --tokens 4096 8192 --prompts 2 --variant defaults='{}' --variant knn1024='{"min_keys": 1024}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .e2e_worker import Genai


@dataclass
class Result:
    tokens: int
    variant: str
    ttft_s: list[float] = field(default_factory=list)
    decode_tok_s: list[float] = field(default_factory=list)
    first_same: list[bool] = field(default_factory=list)
    all_same: list[bool] = field(default_factory=list)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="ice-bench-genai", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("model", type=Path, help="an onnxruntime-genai model folder (SmolLM2 tokenizer vocabulary)")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a rewritten variant: ice-rewrite with these k-NN attributes (repeatable; default: "
        "defaults='{}' and knn1024='{\"min_keys\": 1024}')",
    )
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--prompts", type=int, default=2, help="prompts per length (Brown samples from different starts)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results as JSON")
    args = ap.parse_args(argv)

    from ..metrics import text_ids, tokenizer
    from ..rewriter import RewriteOptions, rewrite

    console = Console(width=160)
    variants = dict(v.split("=", 1) for v in args.variant) or {"defaults": "{}", "knn1024": '{"min_keys": 1024}'}
    scratch = tempfile.TemporaryDirectory(prefix="ice-bench-genai-")  # rewritten models etc.: removed when the run ends
    tmp = Path(scratch.name)
    folders = {"genai original": args.model}
    for name, attrs in variants.items():
        folders[f"genai + iceformer {name}"] = tmp / name
        rewrite(args.model, tmp / name, RewriteOptions(attributes=json.loads(attrs)))
    models = {name: Genai({"model": str(folder), "threads": args.threads}) for name, folder in folders.items()}
    tok = tokenizer()
    results: list[Result] = []
    for n in args.tokens:
        rows = {name: Result(n, name) for name in models}
        for p in range(args.prompts):
            ids = text_ids(tok, n, start=100 + 37 * p)
            reference = None
            for name, model in models.items():  # interleaved: every variant on this prompt before the next prompt
                ans = model(ids, args.new_tokens, None)
                ttft, tps, out = ans["ttft_s"], ans["decode_tok_s"], ans["tokens"]
                reference = out if reference is None else reference
                r = rows[name]
                r.ttft_s.append(ttft)
                r.decode_tok_s.append(tps)
                r.first_same.append(out[:1] == reference[:1])
                r.all_same.append(out == reference)
                console.log(f"{n} tokens, prompt {p}, {name}: first token {ttft:.2f} s, decode {tps:.1f} tok/s")
        results += rows.values()

    table = Table(
        title=f"onnxruntime-genai end to end, {args.threads} threads, fp32, medians over {args.prompts} "
        f"prompts (speedup = original / variant)"
    )
    for col in [
        "tokens",
        "variant",
        "time to first token s",
        "speedup",
        "decode tok/s",
        "first token same",
        f"{args.new_tokens} tokens same",
    ]:
        table.add_column(col, justify="right")
    for r in results:
        base = next(x for x in results if x.tokens == r.tokens and x.variant == "genai original")
        ttft, b = statistics.median(r.ttft_s), statistics.median(base.ttft_s)
        table.add_row(
            str(r.tokens),
            r.variant,
            f"{ttft:.2f}",
            f"{b / ttft:.2f}x",
            f"{statistics.median(r.decode_tok_s):.1f}",
            f"{sum(r.first_same)}/{len(r.first_same)}",
            f"{sum(r.all_same)}/{len(r.all_same)}",
        )
    console.print(table)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "results": [asdict(r) for r in results]}, indent=1
            )
        )


if __name__ == "__main__":
    main()
