"""The rewrite of one model: the graph stages of _passes in order, and their typed report (RewriteOptions in,
RewriteReport out); and the rewrite of one ONNX file (load, rewrite, check, write atomically). The public
`rewrite()` (_api) sends genai folders to _genai and files here."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx_ir as ir

from ..ops import contract, simd_variant
from . import _lower, _passes
from ._errors import AlreadyRewritten, RewriteError
from ._load import load_model
from ._output import save_atomic
from ._passes import Skip, parse_layers

__all__ = [
    "RewriteOptions",
    "RewriteReport",
    "Skip",
    "Stage",
    "parse_layers",
    "check_outcome",
    "rewrite_file",
    "rewrite_model",
]
_DERIVED = ("local_window_size", "is_causal", "scale")  # per core, from the export (--causal overrides causality)


@dataclass
class RewriteOptions:
    attributes: dict = field(default_factory=dict)  # KnnAttention attributes set on every new node
    reference_function: bool = True
    mask_bypass: bool = True  # padding (+ causal) masks -> key_padding_mask (+ is_causal)
    dry_run: bool = False
    layers: str | None = None  # which cores (0-based, graph order) to rewrite, e.g. "0-3,8,20-"; None: all
    skip_first: int = 0  # leave the first N cores unchanged
    causal: str = "auto"  # "auto" (from the mask's construction) | "on" | "off"
    allow_bias: bool = False  # rewrite cores whose mask is a bias as exact-only ops (top_k = 0)
    strict: bool = False  # all or nothing: any core found but not rewritten (other than by --layers) is an error


@dataclass
class Stage:
    """One graph stage of the rewrite as run: whether it changed the model, and what it did."""

    name: str
    modified: bool
    summary: str


@dataclass
class RewriteReport:
    input: str
    output: str | None
    replaced_by_form: dict[str, int]
    replaced: list[_lower.LoweredCore]
    skipped: list[Skip]
    softmax_before: int
    softmax_unmatched: int
    dry_run: bool
    notes: list[str] = field(default_factory=list)  # how the output was validated, what was tolerated
    already_ours: dict[str, int] = field(default_factory=dict)  # our ops in the input, by op type
    # The op library's SIMD tier on this machine (iceformer.ops.simd_variant): "scalar" means no vectorised tier,
    # so the rewritten model runs slower here than the original (it stays correct, and fast on CPUs that have one).
    simd_tier: str = field(default_factory=simd_variant)
    stages: list[Stage] = field(default_factory=list)  # the graph stages in the order they ran

    def to_dict(self) -> dict:
        return asdict(self)


def _count_softmax(model: ir.Model) -> int:
    return sum(1 for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type == "Softmax")


def _check_options(options: RewriteOptions) -> None:
    for name in options.attributes:
        contract.attribute(name)  # unknown attribute names raise KeyError with the known ones
        if name in _DERIVED:
            raise RewriteError(f"attribute {name} is read from each core (its mask and scale), not set by option")
    if options.causal not in ("auto", "on", "off"):
        raise RewriteError(f"causal must be auto, on or off, got {options.causal!r}")


def rewrite_model(model: ir.Model, options: RewriteOptions) -> tuple[ir.Model, RewriteReport]:
    """Rewrites `model` in place; the report's input/output fields are left empty.

    Stages: GroupQueryAttention nodes (genai's decoders) -> ours; then canonicalise, core rules, lower, reference
    function, except on a genai decoder (switched GroupQueryAttention nodes and no Softmax), whose graph is left
    exactly as it was apart from the switched nodes."""
    _check_options(options)
    softmax_before = _count_softmax(model)
    ours = dict(
        Counter(n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.domain == contract.DOMAIN)
    )
    gqa = _passes.GqaNodesPass(options.attributes, options.layers, options.skip_first)(model)
    stages = [
        Stage("GroupQueryAttention nodes", gqa.modified, f"{len(gqa.cores)} switched, {len(gqa.skipped)} skipped")
    ]
    forms, cores, skipped = {}, list(gqa.cores), list(gqa.skipped)
    if gqa.cores:
        forms["GroupQueryAttention"] = len(gqa.cores)
    # A genai decoder (GroupQueryAttention nodes, no Softmax) holds no other core: its graph stays as written.
    if not (gqa.cores and softmax_before == 0):
        canonical = _passes.CanonicalisePass()(model)
        found = _passes.CoreRulesPass(options.allow_bias, options.layers, options.skip_first)(model)
        lowered = _passes.LowerPass(options.attributes, options.mask_bypass, options.causal)(model)
        stages += [
            Stage("canonicalise", canonical.modified, "names, shapes, static shape entries, folded constants"),
            Stage("core rules", found.modified, f"{found.found} cores found, {len(found.skipped)} skipped"),
            Stage("lower", lowered.modified, f"{len(lowered.cores)} KnnAttention nodes"),
        ]
        if options.reference_function:
            ref = _passes.ReferenceFunctionPass()(model)
            stages.append(Stage("reference function", ref.modified, "exact attention in standard ops"))
        forms.update(found.forms)
        cores += lowered.cores
        skipped += found.skipped
    else:
        stages.append(
            Stage("attention cores", False, "not searched: a genai decoder (GroupQueryAttention, no Softmax)")
        )
    report = RewriteReport(
        "",
        None,
        forms,
        cores,
        skipped,
        softmax_before,
        _count_softmax(model),
        options.dry_run,
        already_ours=ours,
        stages=stages,
    )
    return model, report


def check_outcome(src: Path, report: RewriteReport, options: RewriteOptions) -> None:
    """Nothing rewritten, or --strict with something left: an error (nothing is written)."""
    ours = ", ".join(f"{n} {contract.DOMAIN}.{op}" for op, n in sorted(report.already_ours.items()))
    if not report.replaced and report.already_ours:
        raise AlreadyRewritten(
            f"{src}: already rewritten ({ours}) and no attention core is left to rewrite; nothing written"
        )
    if report.already_ours:
        report.notes.append(f"the input already held {ours}; only the cores left were rewritten")
    if not report.replaced:
        raise RewriteError(
            f"{src}: no attention core found to rewrite ({report.softmax_before} Softmax nodes; "
            + ("; ".join(f"{s.rule} at {s.node}: {s.reason}" for s in report.skipped) or "no pattern matched")
            + ")"
        )
    refused = [s for s in report.skipped if s.rule != "selection"]
    if options.strict and (refused or report.softmax_unmatched):
        raise RewriteError(
            f"{src}: --strict, and {len(refused)} core(s) cannot be rewritten and "
            f"{report.softmax_unmatched} Softmax node(s) are left unmatched"
            + "".join(f"; {s.rule} at {s.node}: {s.reason}" for s in refused)
        )


def rewrite_file(src: Path, dst: Path | None, options: RewriteOptions) -> RewriteReport:
    """Rewrites the ONNX file `src` into `dst` (atomically; None or a dry run: nothing written)."""
    model = load_model(src)
    model, report = rewrite_model(model, options)
    report.input = str(src)
    check_outcome(src, report, options)
    if dst is not None and not options.dry_run:
        note = save_atomic(model, dst, src)
        if note:
            report.notes.append(note)
        report.output = str(dst)
    return report
