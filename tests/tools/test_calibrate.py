"""ice-calibrate's choice per core (tools/calibrate.py) on a core whose k-NN sets really err: 2048 keys of
clustered data, sets of 8 keys."""

import hashlib

import numpy as np
import onnx
import pytest
from iceformer.ops import contract
from iceformer.ops.cases import AttentionCase
from iceformer.rewriter import RewriteError, RewriteOptions, rewrite
from iceformer.tools import calibrate as cal

from iceformer.metrics import feeds
from tests.support import genai_tiny

ATTRS = dict(
    is_causal=0, top_k=8, max_candidates=8, local_window=8, num_sink=2, min_keys=0, tail_samples=32, tail_limit=1.0
)
CANDIDATES = ({}, {"tail_samples": 64})


@pytest.fixture(scope="module")
def core():
    x = AttentionCase(Hq=2, Hkv=1, S=128, T=2048, D=32, seed=5, clusters=16).inputs()
    node = onnx.helper.make_node("KnnAttention", ["q", "k", "v"], ["y"], domain="iceformer", name="core0", **ATTRS)
    return node, {"q": x["Q"], "k": x["K"], "v": x["V"]}


def test_no_candidate_within_budget_keeps_the_core_exact(core):
    node, tensors = core
    r = cal.calibrate_core(0, node, tensors, budget=1e-9, threads=1, reps=1, candidates=CANDIDATES)
    assert [t.attrs for t in r.trials] == list(CANDIDATES)
    assert all(1e-9 < t.error <= t.worst_head for t in r.trials)  # the sparse sets err (measured 0.85 / 0.72)
    assert r.chosen == {"top_k": 0} and r.ms == r.exact_ms and r.error == 0.0


def test_more_tail_samples_err_less_and_the_choice_is_the_fastest_within_budget(core):
    node, tensors = core
    r = cal.calibrate_core(0, node, tensors, budget=0.5, threads=1, reps=1, candidates=CANDIDATES)
    assert r.trials[1].error < r.trials[0].error  # 64 samples estimate the unretrieved mass better than 32
    fits = [t for t in r.trials if t.ms < r.exact_ms]
    assert r.chosen == (min(fits, key=lambda t: t.ms).attrs if fits else {"top_k": 0})


def test_a_setting_for_every_core_wins_over_the_candidates_and_is_tried_once(core):
    node, tensors = core
    cands = ({"min_keys": 4096, "tail_samples": 16}, {"tail_samples": 16}, {})
    r = cal.calibrate_core(0, node, tensors, 0.5, 1, 1, candidates=cands, overrides={"min_keys": 0})
    assert [t.attrs for t in r.trials] == [{"min_keys": 0, "tail_samples": 16}, {"min_keys": 0}]


def test_eligible_rows_and_relative_error():
    sparse = dict(top_k=4, local_window=4, num_sink=1, min_keys=0)
    # causal, S = T = 100, threshold max(min_keys 0, 4 + 4 + 1 + 1) = 10 keys: row i sees i + 1 keys -> rows 9..99
    assert cal.eligible_rows(100, 100, True, sparse) == slice(9, 100)
    assert cal.eligible_rows(40, 100, True, {**sparse, "min_keys": 80}) == slice(19, 40)  # row i sees 61 + i keys
    assert cal.eligible_rows(50, 70, False, sparse) == slice(0, 50)
    ref = np.ones((1, 2, 3, 4), np.float32)
    y = ref.copy()
    y[0, 1, 2] = 1.5  # head 1, row 2: |dy| / |y| = 0.5
    mean, worst = cal.relative_error(y, ref, slice(0, 3))
    assert mean == pytest.approx(0.5 / 6) and worst == pytest.approx(0.5 / 3)


LADDER = (cal.Rung(8, 32), cal.Rung(32, 256))


def _exact(node, tensors):
    return cal._core_session(node, tensors, {"top_k": 0}, 1).run(None, tensors)[0]


def test_each_head_gets_the_cheapest_rung_within_budget(core):
    node, tensors = core
    ref = _exact(node, tensors)
    r = cal.route_heads(node, tensors, ref, budget=1e-9, threads=1, overrides={}, ladder=LADDER)
    assert r.budgets == [0, 0] and r.tail_samples == [0, 0]  # nothing fits: exact heads, after every rung
    assert r.ladder == list(LADDER) and len(r.errors) == 2 and all(len(e) == 2 for e in r.errors)  # [rung][head]
    assert r.errors[1][0] < r.errors[0][0] and r.errors[1][1] < r.errors[0][1]  # the larger rung errs less
    every = cal.route_heads(node, tensors, ref, budget=1.0, threads=1, overrides={}, ladder=LADDER)
    assert every.budgets == [8, 8] and every.tail_samples == [32, 32] and every.windows == [0, 0]  # rung 0 fits 100%
    assert every.ladder == list(LADDER[:1]) and every.errors == r.errors[:1]  # both heads placed: rung 1 never runs
    # A budget between a head's two rungs' errors moves that head, and only it, to the larger rung.
    mid = (r.errors[0][1] + r.errors[1][1]) / 2
    other_fits = r.errors[0][0] <= mid
    r2 = cal.route_heads(node, tensors, ref, budget=mid, threads=1, overrides={}, ladder=LADDER)
    assert r2.budgets[1] == 32 and r2.budgets[0] == (8 if other_fits else 32 if r.errors[1][0] <= mid else 0)


def test_a_window_rung_makes_streaming_heads_only_where_it_leaves_keys_out(core):
    """A window that holds every key the calibration's rows see (window + num_sink >= T) would measure exact attention
    and then stream at longer prompts: it is not run. A window that leaves keys out streams the heads within budget."""
    node, tensors = core
    ref = _exact(node, tensors)
    T = cal.core_dims(node, tensors).T
    sinks = {**contract.attribute_defaults(), **ATTRS}["num_sink"]
    r = cal.route_heads(node, tensors, ref, budget=1e-5, threads=1, overrides={}, ladder=(cal.Rung(window=T), *LADDER))
    assert r.ladder == list(LADDER) and r.windows == [0, 0]
    edge = T - sinks - 1  # the widest window that still leaves one key out
    r = cal.route_heads(node, tensors, ref, budget=1.0, threads=1, overrides={}, ladder=(cal.Rung(window=edge),))
    assert r.ladder == [cal.Rung(window=edge)] and r.windows == [edge, edge] and r.budgets == [0, 0]
    assert r.attrs() == {"head_budgets": [0, 0], "head_tail_samples": [0, 0], "head_windows": [edge, edge]}
    short = cal.route_heads(node, tensors, ref, budget=1e-5, threads=1, overrides={}, ladder=(cal.Rung(window=4),))
    assert min(short.errors[0]) > 1e-3 and short.windows == [0, 0]  # 4 keys of many: not within 1e-5, exact


def test_per_head_candidate_is_tried_and_measured_as_one_setting(core):
    node, tensors = core
    r = cal.calibrate_core(0, node, tensors, 1.0, 1, 1, candidates=({},), per_head=True)
    routed = r.trials[-1]
    assert routed.attrs == r.route.attrs()
    assert r.route.ladder == list(cal.LADDER[:1])  # both heads fit the first rung: the ladder stops there
    # budget 100%: the cheapest rung of the default ladder for both heads
    assert (r.route.budgets, r.route.windows) == ([cal.LADDER[0].budget] * 2, [cal.LADDER[0].window] * 2)
    # Heads are independent: both heads at one rung is that rung's scalar setting, error for error (whether the op
    # takes the k-NN path or, union too costly, exact for a block depends on the SIMD tier's retrieval: not pinned).
    y, _ = cal._run(node, tensors, cal.LADDER[0].attrs(2), 1, 0)
    ref = _exact(node, tensors)
    assert (routed.error, routed.worst_head) == cal._error(node, tensors, routed.attrs, y, ref)
    assert routed.error <= routed.worst_head and routed.ms > 0


# --- genai folders: GroupQueryAttention cores -------------------------------------------------------------------

GENAI_SPARSE = {"top_k": 4, "max_candidates": 4, "local_window": 4, "num_sink": 1, "min_keys": 0, "tail_samples": 16}


@pytest.fixture(scope="module")
def genai_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal-genai")
    src = genai_tiny.build(root / "src", max_length=1024)
    rewrite(src, root / "rewritten", RewriteOptions(attributes=GENAI_SPARSE))
    return src, root / "rewritten"


def _gqa_attrs(folder):
    nodes = [n for n in onnx.load(folder / "model.onnx", load_external_data=False).graph.node]
    return [
        {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        for n in nodes
        if n.op_type == "GroupQueryAttention"
    ]


def test_a_genai_folder_is_calibrated_per_group_query_attention_node(genai_folders, tmp_path):
    """The decoder runs once from an empty past (its past_key_values inputs given as [1, Hkv, 0, D]) to capture each
    GroupQueryAttention node's inputs; each node is tried alone ([B, S, Hq Dv] output seen as [B, Hq, S, Dv]); the
    output folder is the input folder with the choices on its nodes."""
    _, rewritten = genai_folders
    before = hashlib.sha256((rewritten / "model.onnx").read_bytes()).hexdigest()
    ids = [int(i) for i in np.random.default_rng(1).integers(0, 97, 400)]
    cores, tensors = cal.capture_core_inputs(rewritten, feeds(ids), 1)
    assert [n.op_type for n in cores] == ["GroupQueryAttention"] * 2
    assert tensors[0]["past_key_values.0.key"].shape == (1, 2, 0, 16)
    assert cal.core_dims(cores[0], tensors[0]) == cal.CoreDims(Hq=4, S=400, T=400, causal=True)
    out = tmp_path / "calibrated"
    report = cal.calibrate(rewritten, out, ids, budget=0.5, threads=1)
    assert len(report.cores) == 2
    for r in report.cores:
        assert len(r.trials) == len(cal.CANDIDATES) + 1 and len(r.route.budgets) == 4  # one rung per query head
        # 16 samples of ~390 keys outside 4-key sets err; 2048 samples (more than the keys) much less
        assert r.trials[1].error < r.trials[0].error
    for r, attrs in zip(report.cores, _gqa_attrs(out)):
        assert all(attrs[k] == pytest.approx(v) for k, v in r.chosen.items())
        assert attrs["num_heads"] == 4 and attrs["do_rotary"] == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in rewritten.iterdir())
    assert (out / "notes.txt").read_text() == (rewritten / "notes.txt").read_text()
    assert hashlib.sha256((rewritten / "model.onnx").read_bytes()).hexdigest() == before  # input untouched
    with pytest.raises(RewriteError, match="exists"):  # a non-empty output folder is refused, nothing written
        cal.calibrate(rewritten, out, ids, budget=0.5, threads=1)


@pytest.mark.genai
def test_a_calibrated_genai_folder_generates_through_onnxruntime_genai(genai_folders, tmp_path):
    """With a budget nothing meets every node is exact (top_k 0): the folder generates the original's tokens."""
    src, rewritten = genai_folders
    ids = [int(i) for i in np.random.default_rng(2).integers(0, 97, 300)]
    report = cal.calibrate(rewritten, tmp_path / "cal", ids, budget=1e-9, threads=1)
    assert [r.chosen for r in report.cores] == [{"top_k": 0}] * 2
    assert [a["top_k"] for a in _gqa_attrs(tmp_path / "cal")] == [0, 0]
    prompt = [ids[:200]]
    assert genai_tiny.generate(tmp_path / "cal", prompt, 8) == genai_tiny.generate(src, prompt, 8)
