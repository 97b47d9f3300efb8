"""tools/sim_knn.py and its engine: each estimator is exact where its model is exact, and the CLI reports it."""

import json

import numpy as np
import pytest
from iceformer.tools import _sim_knn as sim
from iceformer.tools import sim_knn

SCALE = 0.125


def _head(K, V, Q, rank=8):
    return sim.head_data(Q[None], K, V, rank)


def _err(out, ref):
    return float(np.max(np.linalg.norm(out - ref, axis=1) / np.linalg.norm(ref, axis=1)))


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_union_is_exact_when_it_holds_every_key(rng):
    T, D = 512, 16
    K, V, Q = rng.normal(size=(T, D)), rng.normal(size=(T, D)), rng.normal(size=(T, D))
    h = _head(K, V, Q)
    i0 = 448
    q = Q[i0:]
    ref = sim.exact_rows(q, h, i0, SCALE)
    # a budget of every key: U is all visible keys, nothing left to estimate
    assert _err(sim.union_block(q, h, i0, SCALE, budget=T).out, ref) < 1e-12
    # samples >= keys outside U: the systematic sample is every one of them with weight 1
    assert _err(sim.union_block(q, h, i0, SCALE, budget=8, samples=T).out, ref) < 1e-12
    # no tail at all loses mass: the test above can fail
    assert _err(sim.union_block(q, h, i0, SCALE, budget=8, tail="none").out, ref) > 1e-3


def test_pps_sample_is_exact_for_sums_proportional_to_its_proposal(rng):
    rest = np.arange(10, 500)
    f = rng.uniform(0.1, 5.0, size=len(rest))
    pick, w = sim._systematic_pps(rest, f / f.sum(), 37, [3, 0])
    assert len(pick) == 37 and np.all(np.diff(pick) >= 0)
    # each draw of key j stands for f_j / (n p_j) = sum(f) / n
    assert abs(np.sum(f[pick - 10] * w) - f.sum()) < 1e-9 * f.sum()


def test_importance_tail_with_the_true_weights_is_exact_for_one_row(rng):
    T, D, i0 = 512, 16, 300
    K, Q = rng.normal(size=(T, D)), rng.normal(size=(T, D))
    # Values differ only on the sinks (first 4 keys) and the window (last 64 keys before the row): every key the
    # tail can hold has the same value, so the output is exact iff the tail's estimated mass is.
    V = np.tile(rng.normal(size=(1, D)), (T, 1))
    V[:4], V[i0 - 63 :] = rng.normal(size=(4, D)), rng.normal(size=(T - i0 + 63, D))
    h = _head(K, V, Q, rank=2)
    q = Q[i0 : i0 + 1]
    ref = sim.exact_rows(q, h, i0, SCALE)
    kw = dict(tail="importance", budget=8, samples=16, mix=0.0)
    # the true weights as proposal: every draw stands for the tail's mass / 16
    assert _err(sim.union_block(q, h, i0, SCALE, proposal="oracle", **kw).out, ref) < 1e-12
    # the rank-2 scan's scores as proposal: the mass is estimated, not exact (the test above can fail)
    assert _err(sim.union_block(q, h, i0, SCALE, proposal="mean_query", **kw).out, ref) > 1e-4


def test_adaptive_sample_widens_only_above_its_share_and_pays_for_both(rng):
    T, D = 2048, 16
    K, V, Q = rng.normal(size=(T, D)), rng.normal(size=(T, D)), rng.normal(size=(T, D))
    h = _head(K, V, Q)
    i0 = 1984
    q = Q[i0:]
    kw = dict(budget=16, samples=64)
    small = sim.union_block(q, h, i0, SCALE, **kw)
    wide = sim.union_block(q, h, i0, SCALE, budget=16, samples=512)
    # a share no row exceeds (a share is <= 1): the first sample stands, at its own cost
    never = sim.union_block(q, h, i0, SCALE, wide_share=1.0, wide_samples=512, **kw)
    assert np.array_equal(never.out, small.out) and never.cost == small.cost
    # random keys leave most of the mass outside U: share 0 widens, the output is the wide sample's and each row
    # pays for the 64 columns it scored first (every row sees more than 64 keys outside U)
    always = sim.union_block(q, h, i0, SCALE, wide_share=0.0, wide_samples=512, **kw)
    assert np.array_equal(always.out, wide.out)
    assert [c.exact - w.exact for c, w in zip(always.cost, wide.cost)] == [64.0] * len(q)


def test_sub_blocks_run_each_sub_block_alone_and_shrink_the_union(rng):
    """rows = R: the query block's sub-blocks of R rows, each with its own exact set; equal to calling the estimator
    on each sub-block, with fewer exact keys per row (each row shares its set with fewer neighbours)."""
    T, D = 2048, 16
    K, V, Q = rng.normal(size=(T, D)), rng.normal(size=(T, D)), rng.normal(size=(T, D))
    h = _head(K, V, Q)
    i0 = 1984
    q = Q[i0:]
    whole = sim.run_candidate({"budget": 32, "samples": 128}, q, h, i0, SCALE)
    split = sim.run_candidate({"budget": 32, "samples": 128, "rows": 16}, q, h, i0, SCALE)
    alone = [sim.union_block(q[a : a + 16], h, i0 + a, SCALE, budget=32, samples=128) for a in range(0, 64, 16)]
    assert np.array_equal(split.out, np.concatenate([r.out for r in alone]))
    assert split.cost == [c for r in alone for c in r.cost]
    assert sum(c.exact for c in split.cost) < sum(c.exact for c in whole.cost)
    with pytest.raises(ValueError, match="rows must divide 64"):
        sim.run_candidate({"rows": 24}, q, h, i0, SCALE)


def test_block_estimators_are_exact_on_blocks_of_equal_keys(rng):
    """Keys equal within each key block: every key of a block has the same weight, so mass n e^{s q.k} and the
    block's mean value are exact, at every order (S = 0, C = 0), and so is the oracle."""
    T, D = 1024, 16
    K = np.repeat(rng.normal(size=(T // sim.BLOCK, D)), sim.BLOCK, axis=0)
    V, Q = rng.normal(size=(T, D)), rng.normal(size=(T, D))
    h = _head(K, V, Q)
    i0 = 960
    q = Q[i0:]
    ref = sim.exact_rows(q, h, i0, SCALE)
    for order in (0, 1, 2):
        out = sim.union_block(q, h, i0, SCALE, budget=16, tail="summary", order=order).out
        assert _err(out, ref) < 1e-10, order
        assert _err(sim.blocks_block(q, h, i0, SCALE, mass=0.5, order=order).out, ref) < 1e-10, order
    assert _err(sim.union_block(q, h, i0, SCALE, budget=16, tail="oracle").out, ref) < 1e-10
    # the oracle is not exact when keys differ within a block and values too (its value is the block mean)
    h2 = _head(rng.normal(size=(T, D)), V, Q)
    assert (
        _err(sim.union_block(q, h2, i0, SCALE, budget=16, tail="oracle").out, sim.exact_rows(q, h2, i0, SCALE)) > 1e-3
    )


def test_gaussian_block_moments_give_the_log_mass_and_weighted_value(rng):
    """Jointly Gaussian (k, v): log sum_j e^{s q.k_j} = log n + s q.mu + s^2 q^T S q / 2 (order >= 1) and the
    e^{s q.k}-weighted mean value = nu + s C q (order 2, Stein's lemma); checked on 400000 draws (sampling error of
    the empirical sums below 3e-3 at this variance), order 0 visibly off."""
    n, D = 400_000, 4
    L = rng.normal(size=(D, D)) * 0.3
    k = rng.normal(size=(n, D)) @ L.T + 0.3
    v = k @ rng.normal(size=(D, 2)) + rng.normal(size=(n, 2))
    q = rng.normal(size=(1, D))
    mu, nu = k.mean(0), v.mean(0)
    mom = sim.Moments(
        np.zeros(1, int),
        np.array([float(n)]),
        mu[None],
        nu[None],
        np.cov(k.T, bias=True)[None],
        ((v - nu).T @ (k - mu) / n)[None],
    )
    h = sim.HeadData(*([None] * 2), np.eye(D), np.eye(D), *([None] * 6))
    e = np.exp(q @ k.T)[0]
    log_mass, value = np.log(e.sum()), e @ v / e.sum()
    a1, v2 = sim.summary_part(q, h, mom, 1.0, 2)
    assert abs(a1[0, 0] - log_mass) < 1e-2
    assert np.abs(v2[0, 0] - value).max() < 1e-2
    a0, v0 = sim.summary_part(q, h, mom, 1.0, 0)
    assert log_mass - a0[0, 0] > 0.05  # Jensen: the mean key underestimates the mass
    assert np.abs(v0[0] - value).max() > 0.1


def test_route_picks_each_heads_cheapest_candidate_within_the_target():
    """Head 0 is within 1% on the cheap candidate, head 1 only on the dear one; at 0.1% neither is, so each head
    takes its most accurate. The routed error and cost are the evaluation rows' of those picks."""

    def row(name, errs, costs, layer=2):
        return {"candidate": name, "layer": layer, "err_per_head": errs, "cost_per_head": costs}

    calib = [row("cheap", [0.005, 0.03], [0.1, 0.1]), row("dear", [0.002, 0.008], [0.4, 0.4])]
    evaluation = [row("cheap", [0.006, 0.05], [0.1, 0.12]), row("dear", [0.003, 0.009], [0.3, 0.5])]
    (r,) = sim_knn.route(calib, evaluation, 0.01)
    assert r["picks"] == ["cheap", "dear"] and r["layer"] == 2
    assert r["err_mean"] == pytest.approx((0.006 + 0.009) / 2) and r["err_worst_head"] == pytest.approx(0.009)
    assert r["cost_fraction"] == pytest.approx((0.1 + 0.5) / 2)
    assert sim_knn.route(calib, evaluation, 0.001)[0]["picks"] == ["dear", "dear"]


def test_cli_routes_on_the_shipped_capture(tmp_path):
    out = tmp_path / "sim.json"
    cands = ['{"name": "b16", "budget": 16, "samples": 0}', '{"name": "b256", "budget": 256, "samples": 0}']
    args = [
        "--layers",
        "13",
        "--blocks",
        "1",
        "--calibrate-tokens",
        "1024",
        "--route",
        "0.0",
        "1.0",
        "--json",
        str(out),
    ]
    sim_knn.main([a for c in cands for a in ("--candidate", c)] + args)
    rows = json.loads(out.read_text())["rows"]
    by = {r["candidate"]: r for r in rows}
    # no head is exact at either budget: target 0 gives each head its most accurate candidate (the larger budget);
    # any error passes 1.0, so every head takes the cheaper one and costs what it costs
    strict, loose = by["routed, calibration error <= 0%"], by["routed, calibration error <= 100%"]
    assert set(strict["picks"]) == {"b256"} and set(loose["picks"]) == {"b16"}
    assert loose["cost_fraction"] == pytest.approx(by["b16"]["cost_fraction"])
    assert strict["err_mean"] == pytest.approx(by["b256"]["err_mean"])


def test_query_blocks():
    assert sim_knn.query_blocks(2048, 1024, 2) == [1024, 1728, 1792, 1856, 1920, 1984]
    assert sim_knn.query_blocks(1024, 0, 0) == [768, 832, 896, 960]


def test_cli_on_the_shipped_capture(tmp_path):
    out = tmp_path / "sim.json"
    sim_knn.main(["--layers", "13", "--blocks", "1", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["candidate"] for r in rows] == [c["name"] for c in sim_knn.DEFAULT_CANDIDATES]
    by = {r["candidate"]: r for r in rows}
    # at 2048 tokens today's 1024 samples cover every key outside U: exact, at more than the exact path's cost
    assert by["today (sample 1024)"]["err_mean"] < 1e-12
    assert by["today (sample 1024)"]["cost_fraction"] > 1.0
    assert by["top set only"]["err_mean"] > 0 and by["top set only"]["cost_fraction"] < 1.0
    assert all(r["layer"] == 13 and r["err_last_rows"] is not None for r in rows)
    # per head: the worst head's error is the largest of them, the costs average to the layer's (equal rows per head)
    r = by["top set only"]
    assert max(r["err_per_head"]) == pytest.approx(r["err_worst_head"])
    assert np.mean(r["cost_per_head"]) == pytest.approx(r["cost_fraction"])
