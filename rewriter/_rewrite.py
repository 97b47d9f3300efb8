"""The rewrite driver: load, run the graph stages (_passes: canonicalise, core rules, lower, reference function),
check, and write atomically. Returns a typed report."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx
import onnx_ir as ir
import onnxruntime as ort

from ..ops import contract, session_options, simd_variant
from . import _genai, _gqa, _lower, _passes
from ._errors import AlreadyRewritten, RewriteError
from ._load import load_model
from ._passes import Skip, parse_layers

__all__ = ["RewriteOptions", "RewriteReport", "Skip", "parse_layers", "rewrite", "rewrite_model"]
_DERIVED = ("local_window_size", "is_causal", "scale")  # per core, from the export (--causal overrides causality)
EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of initializers above which weights always go to an external file


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

    def to_dict(self) -> dict:
        return asdict(self)


def _count_softmax(model: ir.Model) -> int:
    return sum(1 for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type == "Softmax")


def _rewrite_gqa_nodes(model: ir.Model, options: RewriteOptions) -> tuple[list[_lower.LoweredCore], list[Skip]]:
    """com.microsoft.GroupQueryAttention -> iceformer.GroupQueryAttention (numbered by --layers among themselves)."""
    found = _gqa.find(model)
    if not found:
        return [], []
    selected = set(i for i in parse_layers(options.layers, len(found)) if i >= options.skip_first)
    cores, skips, nodes = [], [], []
    for i, g in enumerate(found):
        name = g.node.name or g.node.op_type
        if i not in selected:
            skips.append(
                Skip(
                    "selection",
                    name,
                    f"core {i} not selected (layers={options.layers!r}, skip_first={options.skip_first})",
                )
            )
        elif g.reason:
            skips.append(Skip("GroupQueryAttention", name, g.reason))
        else:
            nodes.append(g.node)
            a = g.node.attributes
            cores.append(
                _lower.LoweredCore(
                    name,
                    a.get_float("scale", 0.0),
                    a.get_int("causal", 1),
                    False,
                    "none",
                    "none",
                    False,
                    layer=i,
                    window=a.get_int("local_window_size", -1),
                )
            )
    _gqa.GqaToIceformerPass(nodes, options.attributes)(model)
    return cores, skips


def rewrite_model(model: ir.Model, options: RewriteOptions) -> tuple[ir.Model, RewriteReport]:
    """Rewrites `model` in place; the report's input/output fields are left empty."""
    for name in options.attributes:
        contract.attribute(name)  # unknown attribute names raise KeyError with the known ones
        if name in _DERIVED:
            raise RewriteError(f"attribute {name} is read from each core (its mask and scale), not set by option")
    if options.causal not in ("auto", "on", "off"):
        raise RewriteError(f"causal must be auto, on or off, got {options.causal!r}")
    softmax_before = _count_softmax(model)
    ours = dict(
        Counter(n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.domain == contract.DOMAIN)
    )
    gqa_cores, gqa_skips = _rewrite_gqa_nodes(model, options)
    if gqa_cores and softmax_before == 0:  # an onnxruntime-genai model: nothing else to find, nothing else touched
        report = RewriteReport(
            "",
            None,
            {"GroupQueryAttention": len(gqa_cores)},
            gqa_cores,
            gqa_skips,
            0,
            0,
            options.dry_run,
            already_ours=ours,
        )
        return model, report
    _passes.CanonicalisePass()(model)
    cores = _passes.CoreRulesPass(options.allow_bias, options.layers, options.skip_first)(model)
    lowered = _passes.LowerPass(options.attributes, options.mask_bypass, options.causal)(model)
    if options.reference_function:
        _passes.ReferenceFunctionPass()(model)
    forms = dict(cores.forms)
    if gqa_cores:
        forms["GroupQueryAttention"] = len(gqa_cores)
    report = RewriteReport(
        "",
        None,
        forms,
        gqa_cores + lowered.cores,
        gqa_skips + cores.skipped,
        softmax_before,
        _count_softmax(model),
        options.dry_run,
        already_ours=ours,
    )
    return model, report


def _checker_error(path: Path) -> str | None:
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        return str(e).strip().splitlines()[0]
    return None


def _validate(tmp: Path, src: Path) -> str | None:
    """onnx.checker on the output; when it fails and the input fails it too (ORT's optimizer writes nodes such as
    SimplifiedLayerNormalization in the default domain, which onnxruntime runs and the checker rejects), onnxruntime
    loading the output with our library decides instead. Returns a note when the checker was overruled."""
    err = _checker_error(tmp)
    if err is None:
        return None
    before = _checker_error(src)
    if before is None:
        raise RewriteError(f"the rewritten model fails onnx.checker: {err}")
    try:
        ort.InferenceSession(str(tmp), session_options(1), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise RewriteError(f"the rewritten model fails onnx.checker ({err}) and onnxruntime cannot load it: {e}") from e
    return (
        f"onnx.checker rejects the input model already ({before}); the output was validated by loading it in "
        "onnxruntime instead"
    )


def _save_atomic(model: ir.Model, out: Path, src: Path) -> str | None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK):
            raise PermissionError("permission denied")
        tmpdir = Path(tempfile.mkdtemp(prefix=".ice-rewrite-", dir=out.parent))
    except OSError as e:
        raise RewriteError(f"{out.parent}: not writable ({e})") from e
    consts = [v.const_value for v in model.graph.initializers.values() if v.const_value is not None]
    big = sum(c.nbytes for c in consts)
    # Keep weights external when the input had them external (a protobuf with embedded weights costs a second
    # copy of them in memory while onnxruntime loads it) or when they are large.
    external = big > EXTERNAL_DATA_THRESHOLD or any(isinstance(c, ir.ExternalTensor) for c in consts)
    try:
        tmp = tmpdir / out.name
        data_name = out.name + ".data" if external else None
        if data_name is None:  # small: one self-contained file (weights read from the input's external data)
            ir.external_data.load_to_model(model)
        ir.save(model, tmp, external_data=data_name)
        note = _validate(tmp, src)
        if data_name is not None:
            os.replace(tmpdir / data_name, out.parent / data_name)
        os.replace(tmp, out)
        return note
    finally:
        for f in tmpdir.iterdir():
            f.unlink()
        tmpdir.rmdir()


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


def rewrite(
    input_path: str | os.PathLike, output_path: str | os.PathLike | None = None, options: RewriteOptions | None = None
) -> RewriteReport:
    """Rewrites the attention cores of the ONNX file `input_path` into our ops and writes `output_path` (atomically;
    never over the input). An onnxruntime-genai model folder (holding genai_config.json) is rewritten into a new
    folder that loads our library. Raises RewriteError when nothing can be rewritten."""
    options = options or RewriteOptions()
    src = Path(input_path)
    if output_path is None and not options.dry_run:
        raise RewriteError("an output path is needed (or a dry run)")
    dst = Path(output_path) if output_path is not None else None
    if dst is not None and dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise RewriteError(f"{dst}: the output path is the input path; refusing to overwrite the input")
    if _genai.is_genai_folder(src):
        return _genai.rewrite_folder(src, dst if dst is not None else src, options)
    model = load_model(src)
    model, report = rewrite_model(model, options)
    report.input = str(src)
    check_outcome(src, report, options)
    if dst is not None and not options.dry_run:
        note = _save_atomic(model, dst, src)
        if note:
            report.notes.append(note)
        report.output = str(dst)
    return report
