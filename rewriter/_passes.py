"""The rewrite's graph stages as onnx-ir passes, in order: switch ORT's GroupQueryAttention nodes to ours (genai
folders), canonicalise the graph, rewrite every attention core into the canonical node (carrying its layer index),
lower each canonical node into our op once, attach the reference function. Each stage's result is a `PassResult`;
the last two check what they promise in `ensures`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx
import onnx_ir as ir
import onnxscript.optimizer
from onnx_ir.passes import InPlacePass, PassResult
from onnx_ir.passes.common import IdentityEliminationPass, RemoveUnusedNodesPass, ShapeInferencePass
from onnxscript.rewriter import MatchingTracer, MatchStatus

from ..ops import contract
from . import _canonical, _function, _gqa, _lower, _maskcheck, _rules, _shapes
from ._errors import RewriteError

RULE_TAG = "pkg.onnxscript.rewriter.rule_name"  # onnxscript names the rule on the nodes it writes
LAYER_TAG = _canonical.LAYER_TAG


@dataclass
class Skip:
    rule: str
    node: str
    reason: str


def parse_layers(spec: str | None, count: int) -> list[int]:
    """Indices in [0, count) selected by a spec like "0-3,8,20-" (None or "all": every one)."""
    if spec is None or spec.strip() in ("", "all"):
        return list(range(count))
    chosen: set[int] = set()
    for part in spec.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            a = int(lo) if lo else 0
            b = (int(hi) if hi else count - 1) if dash else a
        except ValueError:
            raise RewriteError(f"bad layer spec {spec!r}: expected items like 3, 0-5 or 20-") from None
        if a < 0 or b < a:
            raise RewriteError(f"bad layer spec {spec!r}: range {part!r} is empty or negative")
        chosen.update(range(a, min(b, count - 1) + 1))
    return sorted(chosen)


def selected(count: int, layers: str | None, skip_first: int) -> set[int]:
    """Indices of the cores --layers / --skip-first choose among `count` found."""
    return {i for i in parse_layers(layers, count) if i >= skip_first}


def not_selected(i: int, node: ir.Node, layers: str | None, skip_first: int) -> Skip:
    return Skip(
        "selection", node.name or node.op_type, f"core {i} not selected (layers={layers!r}, skip_first={skip_first})"
    )


@dataclass
class GqaResult(PassResult):
    cores: list[_lower.LoweredCore] = field(default_factory=list)  # switched nodes, in graph order
    skipped: list[Skip] = field(default_factory=list)


class GqaNodesPass(InPlacePass):
    """com.microsoft.GroupQueryAttention -> iceformer.GroupQueryAttention (same inputs, outputs and attributes, plus
    the k-NN attributes); numbered by --layers among themselves. A node using what ours refuses stays and is a skip."""

    def __init__(self, attributes: dict, layers: str | None, skip_first: int):
        super().__init__()
        self.attributes, self.layers, self.skip_first = attributes, layers, skip_first

    def call(self, model: ir.Model) -> GqaResult:
        found = _gqa.find(model)
        if not found:  # --layers numbers the decomposed cores instead
            return GqaResult(model, False)
        chosen = selected(len(found), self.layers, self.skip_first)
        cores, skipped, nodes = [], [], []
        for i, g in enumerate(found):
            name = g.node.name or g.node.op_type
            if i not in chosen:
                skipped.append(not_selected(i, g.node, self.layers, self.skip_first))
            elif g.reason:
                skipped.append(Skip("GroupQueryAttention", name, g.reason))
            else:
                nodes.append(g.node)
                a = g.node.attributes
                scale, causal, window = (
                    a.get_float("scale", 0.0),
                    a.get_int("causal", 1),
                    a.get_int("local_window_size", -1),
                )
                cores.append(
                    _lower.LoweredCore(name, scale, causal, False, "none", "none", False, layer=i, window=window)
                )
        _gqa.switch(model, nodes, self.attributes)
        return GqaResult(model, bool(nodes), cores, skipped)


def _canonical_nodes(model: ir.Model) -> list[ir.Node]:
    return [
        n
        for n in ir.traversal.RecursiveGraphIterator(model.graph)
        if n.domain == _canonical.DOMAIN and n.op_type == _canonical.OP
    ]


class CanonicalisePass(InPlacePass):
    """What the rules need to see every core plainly: one name per value, shapes (also through ORT's contrib ops),
    static shape entries as constants, folded constants (run-time scales become numbers), no Identity (dynamo's
    clone/dropout, T5's no-op CastLike once folded) and no dead uses that would block a match. Shapes come first
    because TorchScript exports carry no value_info: folding needs them to drop no-op Casts, and the new nodes need
    output shapes (ORT cannot infer through a custom op, and Reshape targets built from Shape() downstream would
    break)."""

    def call(self, model: ir.Model) -> PassResult:
        _shapes.UniqueValueNamesPass()(model)  # shape inference answers by name: If branches must not share names
        ShapeInferencePass(strict_mode=False)(model)
        _shapes.ContribShapePass()(model)
        IdentityEliminationPass()(model)
        _shapes.StaticShapePass()(model)
        onnxscript.optimizer.fold_constants(model)
        IdentityEliminationPass()(model)
        RemoveUnusedNodesPass()(model)
        return PassResult(model, True)


@dataclass
class CoresResult(PassResult):
    found: int = 0  # cores found, biases included (what --layers numbers)
    skipped: list[Skip] = field(default_factory=list)
    forms: dict[str, int] = field(default_factory=dict)  # canonical nodes written, by rule


def _matched_roots(tracer: MatchingTracer, model: ir.Model) -> list[ir.Node]:
    """Root nodes of the successful matches of a traced pass, in graph order."""
    ok = {
        id(m.root_node)
        for matches in tracer.best_matches_map.values()
        for m in matches
        if m.status == MatchStatus.SUCCESS
    }
    return [n for n in ir.traversal.RecursiveGraphIterator(model.graph) if id(n) in ok]


def _skips(tracer: MatchingTracer, model: ir.Model, matched: set[int]) -> list[Skip]:
    """Failed checks at nodes that are still there and that no alternative matched (a commuted variant failing
    where another succeeded is not a skip)."""
    alive = {id(n) for n in ir.traversal.RecursiveGraphIterator(model.graph)}
    out: list[Skip] = []
    for rule, matches in tracer.best_matches_map.items():
        for m in matches:
            root = id(m.root_node)
            if m.status == MatchStatus.CONDITION_FAILED and root in alive and root not in matched:
                reason = m.match_result.reason if m.match_result is not None else ""
                skip = Skip(rule.name or type(rule).__name__, m.root_node.name or m.root_node.op_type, reason)
                if skip not in out:  # commuted variants of a rule report the same failure
                    out.append(skip)
    return out


class CoreRulesPass(InPlacePass):
    """Every selected attention core -> one canonical node, tagged with its layer index (LAYER_TAG: set on the
    core's root before the rewrite; onnxscript copies the matched nodes' metadata onto what replaces them).
    The others are reported as skips: a rule's failed check with its reason, or not selected."""

    def __init__(self, allow_bias: bool, layers: str | None, skip_first: int):
        super().__init__()
        self.allow_bias, self.layers, self.skip_first = allow_bias, layers, skip_first

    def call(self, model: ir.Model) -> CoresResult:
        # Traced passes only record (what matches, why candidates fail); the last one rewrites.
        # Every core, biases included, for the numbering --layers refers to; then why the options leave some out.
        every = MatchingTracer()
        _rules.rules(allow_bias=True).apply_to_model(model, tracer=every)
        found = _matched_roots(every, model)
        tracer = MatchingTracer()
        _rules.rules(self.allow_bias).apply_to_model(model, tracer=tracer)
        chosen = selected(len(found), self.layers, self.skip_first)
        excluded = frozenset(id(n) for i, n in enumerate(found) if i not in chosen)
        accepted = {id(n) for n in _matched_roots(tracer, model)}
        skipped = _skips(tracer, model, accepted) + [
            not_selected(i, n, self.layers, self.skip_first) for i, n in enumerate(found) if id(n) in excluded
        ]
        for i, root in enumerate(found):
            root.metadata_props[LAYER_TAG] = str(i)
        _rules.rules(self.allow_bias, excluded).apply_to_model(model)
        canonical = _canonical_nodes(model)
        forms = Counter(n.metadata_props.get(RULE_TAG, "?").split(",")[0].strip() for n in canonical)
        return CoresResult(model, bool(canonical), len(found), skipped, dict(forms))

    def ensures(self, model: ir.Model) -> None:
        for n in _canonical_nodes(model):
            if LAYER_TAG not in n.metadata_props:
                raise ValueError(f"canonical node {n.name} carries no layer index")


@dataclass
class LowerResult(PassResult):
    cores: list[_lower.LoweredCore] = field(default_factory=list)  # in graph order


class LowerPass(InPlacePass):
    """Every canonical node -> one iceformer.KnnAttention (see _lower); the canonical domain leaves the model."""

    def __init__(self, attributes: dict, mask_bypass: bool, causal: str):
        super().__init__()
        self.attributes, self.mask_bypass, self.causal = attributes, mask_bypass, causal

    def call(self, model: ir.Model) -> LowerResult:
        checker = _maskcheck.MaskChecker(model)
        cores = _lower.lower_graph(model.graph, self.attributes, [0], checker, self.mask_bypass, self.causal)
        RemoveUnusedNodesPass()(model)
        model.opset_imports.pop(_canonical.DOMAIN, None)
        if cores:
            model.opset_imports[contract.DOMAIN] = contract.VERSION
        return LowerResult(model, bool(cores), cores)

    def ensures(self, model: ir.Model) -> None:
        if left := _canonical_nodes(model):
            raise ValueError(f"{len(left)} canonical node(s) left unlowered")


class ReferenceFunctionPass(InPlacePass):
    """Attaches the model-local function iceformer.KnnAttention (exact attention in standard ops at the model's
    default-domain opset), so that the model runs in plain onnxruntime without our library."""

    def call(self, model: ir.Model) -> PassResult:
        if not any(n.domain == contract.DOMAIN for n in ir.traversal.RecursiveGraphIterator(model.graph)):
            return PassResult(model, False)
        fn = ir.serde.deserialize_function(_function.reference_function(model.opset_imports.get("", 18)))
        model.functions[fn.identifier()] = fn
        model.ir_version = max(model.ir_version, 8)  # model-local functions
        return PassResult(model, True)

    def ensures(self, model: ir.Model) -> None:
        fn = model.functions.get((contract.DOMAIN, contract.OP_TYPE, ""))
        if fn is None:
            return
        opsets = {domain: version for domain, version in model.opset_imports.items()}
        ctx = onnx.checker.C.CheckerContext()
        ctx.ir_version = model.ir_version
        ctx.opset_imports = opsets
        onnx.checker.check_function(ir.serde.serialize_function(fn), ctx)
