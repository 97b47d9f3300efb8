"""ice-calibrate's choice per core (tools/calibrate.py) on a core whose k-NN sets really err: 2048 keys of
clustered data, sets of 8 keys."""

import numpy as np
import onnx
import pytest
from iceformer.ops.cases import AttentionCase
from iceformer.tools import calibrate as cal

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


LADDER = ((8, 32), (32, 256))


def _exact(node, tensors):
    return cal._core_session(node, tensors, {"top_k": 0}, 1).run(None, tensors)[0]


def test_each_head_gets_the_cheapest_rung_within_budget(core):
    node, tensors = core
    ref = _exact(node, tensors)
    r = cal.route_heads(node, tensors, ref, budget=1.0, threads=1, overrides={}, ladder=LADDER)
    assert len(r.errors) == 2 and all(len(e) == 2 for e in r.errors)  # [rung][head], Hq = 2
    assert r.errors[1][0] < r.errors[0][0] and r.errors[1][1] < r.errors[0][1]  # the larger rung errs less
    assert r.budgets == [8, 8] and r.tail_samples == [32, 32]  # every rung fits a budget of 100%
    # A budget between a head's two rungs' errors moves that head, and only it, to the larger rung.
    mid = (r.errors[0][1] + r.errors[1][1]) / 2
    other_fits = r.errors[0][0] <= mid
    r2 = cal.route_heads(node, tensors, ref, budget=mid, threads=1, overrides={}, ladder=LADDER)
    assert r2.budgets[1] == 32 and r2.budgets[0] == (8 if other_fits else 32 if r.errors[1][0] <= mid else 0)
    r3 = cal.route_heads(node, tensors, ref, budget=1e-9, threads=1, overrides={}, ladder=LADDER)
    assert r3.budgets == [0, 0] and r3.tail_samples == [0, 0]  # nothing fits: exact heads


def test_per_head_candidate_is_tried_and_measured_as_one_setting(core):
    node, tensors = core
    r = cal.calibrate_core(0, node, tensors, 1.0, 1, 1, candidates=({},), per_head=True)
    routed = r.trials[-1]
    assert routed.attrs == {"head_budgets": r.route.budgets, "head_tail_samples": r.route.tail_samples}
    assert r.route.budgets == [64, 64]  # budget 100%: the cheapest rung of the default ladder for both heads
    assert 0 < routed.error <= routed.worst_head
