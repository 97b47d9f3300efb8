"""ice-rewrite: replace the attention cores of an exported ONNX model with iceformer.KnnAttention, and the
GroupQueryAttention nodes of an onnxruntime-genai model (a file or its folder) with iceformer.GroupQueryAttention.
A model folder (genai, or an optimum export: config.json and one .onnx) is rewritten into a new folder."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from ..ops import contract
from ._api import rewrite
from ._errors import AlreadyRewritten, RewriteError
from ._rewrite import RewriteOptions


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ice-rewrite",
        description=__doc__,
        epilog="exit status: 0 rewritten; 2 error, nothing written (unreadable or incomplete model, no core found, "
        "--strict); 3 the input is already rewritten, nothing written",
    )
    ap.add_argument(
        "input",
        help="exported ONNX model, or a model folder: onnxruntime-genai's (genai_config.json) or an optimum export's "
        "(config.json and one .onnx)",
    )
    ap.add_argument(
        "output",
        nargs="?",
        help="rewritten model, or a new folder for a folder input (written atomically; never the input)",
    )
    ap.add_argument("--top-k", type=int, help="KnnAttention top_k for every rewritten core (0: exact)")
    ap.add_argument(
        "--attr",
        type=contract.parse_attribute,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any KnnAttention attribute, e.g. --attr min_keys=4096 (repeatable; lists comma-separated, one value per "
        "query head: --attr head_budgets=128,256,...)",
    )
    ap.add_argument(
        "--no-reference-function",
        action="store_true",
        help="do not attach the exact reference function (the model then needs the iceformer library)",
    )
    ap.add_argument(
        "--no-mask-bypass",
        action="store_true",
        help="keep the model's [B,1,S,T] mask instead of key_padding_mask + is_causal",
    )
    ap.add_argument(
        "--layers",
        metavar="SPEC",
        help="which attention cores to rewrite, 0-based in graph order: e.g. 0-3,8,20- (default: all)",
    )
    ap.add_argument("--skip-first", type=int, default=0, metavar="N", help="leave the first N cores unchanged")
    ap.add_argument(
        "--causal",
        choices=["auto", "on", "off"],
        default="auto",
        help="auto: from the mask's construction; on: every core is causal; off: never inferred",
    )
    ap.add_argument(
        "--allow-bias",
        action="store_true",
        help="rewrite cores whose mask is a bias (T5, ALiBi) as exact-only ops instead of leaving them",
    )
    ap.add_argument("--dry-run", action="store_true", help="report what would be rewritten; write nothing")
    ap.add_argument(
        "--strict",
        action="store_true",
        help="all or nothing: fail (and write nothing) if any attention core found cannot be rewritten",
    )
    ap.add_argument("--json", metavar="PATH", help="write the report as JSON ('-' for stdout)")
    return ap


def _print_report(console: Console, report) -> None:
    """The report as a table of the rewritten cores, then the proofs, forms, notes and skips."""
    table = Table(title=f"{report.input} -> {report.output or '(dry run)'}")
    for col in ["core", "node", "scale", "causal", "window", "GQA stripped", "mask", "mask made of", "bypassed"]:
        table.add_column(col)
    for r in report.replaced:
        table.add_row(
            str(r.layer) + (" (exact: bias)" if r.exact_only else ""),
            r.name,
            f"{r.scale:.6g}",
            str(r.is_causal),
            str(r.window) if r.window >= 0 else "-",
            "yes" if r.gqa_stripped else "no",
            r.mask,
            r.mask_kind,
            "yes" if r.bypassed else "no",
        )
    console.print(table)
    for check in sorted({r.bypass_check for r in report.replaced if r.bypass_check}):
        cores = [str(r.layer) for r in report.replaced if r.bypass_check == check]
        verb = "bypass" if any(r.bypassed for r in report.replaced if r.bypass_check == check) else "mask kept"
        console.print(f"{verb} (cores {', '.join(cores)}): {check}", markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"rewritten by form: {report.replaced_by_form}; Softmax nodes left unmatched: "
        f"{report.softmax_unmatched} of {report.softmax_before}"
    )
    for note in report.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    for s in report.skipped:
        console.print(f"skipped ({s.rule}) at {s.node}: {s.reason}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"op library SIMD tier on this machine: {report.simd_tier}")
    if report.simd_tier == "scalar":
        console.print(
            "warning: this CPU has none of the op's vectorised tiers (AVX2+FMA, AVX-512, ARM64 NEON), so the op runs "
            "its scalar reference here: the rewritten model is correct but slower than the original on this machine "
            "(it is fast on CPUs with one of those tiers)",
            style="yellow",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    attrs = dict(args.attr)
    if args.top_k is not None:
        attrs["top_k"] = args.top_k
    console = Console(stderr=True)
    try:
        report = rewrite(
            args.input,
            args.output,
            RewriteOptions(
                attributes=attrs,
                reference_function=not args.no_reference_function,
                mask_bypass=not args.no_mask_bypass,
                dry_run=args.dry_run or args.output is None,
                layers=args.layers,
                skip_first=args.skip_first,
                causal=args.causal,
                allow_bias=args.allow_bias,
                strict=args.strict,
            ),
        )
    except RewriteError as e:
        console.print(f"ice-rewrite: {e}", style="red", markup=False, highlight=False, soft_wrap=True)
        return 3 if isinstance(e, AlreadyRewritten) else 2
    _print_report(console, report)
    if args.json:
        text = json.dumps(report.to_dict(), indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
