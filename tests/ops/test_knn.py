"""The k-NN path: semantics against the float64 perfect-search reference, masks, causality, determinism."""

import json

import numpy as np
import pytest

from conftest import knn_session, run_case
from iceformer.ops import knn_attention_reference
from iceformer.ops.reference import topk_attention_reference
from iceformer.tools.cases import AttentionCase

# Settings that make every visible key a candidate: the walk is then exhaustive, so the path must equal the
# perfect-search reference (top_k + window + sinks) exactly up to float32 rounding.
EXHAUSTIVE = dict(top_k=16, local_window=8, num_sink=2, min_keys=0, max_candidates=1 << 20, tail_samples=0)

KNN_GRID = [
    AttentionCase(S=200, T=200, D=32, attrs=EXHAUSTIVE),
    AttentionCase(S=200, T=200, D=32, is_causal=1, attrs=EXHAUSTIVE),
    AttentionCase(Hq=6, Hkv=2, S=96, T=300, is_causal=1, attrs=EXHAUSTIVE),  # GQA, causal with offset
    AttentionCase(B=2, S=64, T=250, key_padding_mask="bool", attrs=EXHAUSTIVE),
    AttentionCase(S=64, T=180, attn_mask="bool", mask_shape="1HST", attrs=EXHAUSTIVE),
    AttentionCase(S=64, T=180, attn_mask="float", mask_shape="ST", attrs=EXHAUSTIVE),
    AttentionCase(S=80, T=150, D=48, Dv=20, attrs={**EXHAUSTIVE, "rank": 5}),
    # The Prioritized-DCI walk (search=1), exhaustive too.
    AttentionCase(S=80, T=150, D=48, Dv=20, attrs={**EXHAUSTIVE, "search": 1, "L": 3, "m": 3}),
    AttentionCase(S=120, T=120, is_causal=1, key_padding_mask="bool", B=2, attrs={**EXHAUSTIVE, "search": 1}),
]


@pytest.mark.parametrize("case", KNN_GRID, ids=lambda c: c.label())
def test_exhaustive_search_equals_perfect_topk(case, tmp_stats):
    inputs = case.inputs()
    got = run_case(case)
    ref = topk_attention_reference(**inputs, **case.op_attrs())
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)
    calls = [json.loads(line) for line in tmp_stats.read_text().splitlines()]
    assert calls[-1]["path"] == "knn"


def test_topk_covering_all_keys_takes_the_exact_path(tmp_stats):
    case = AttentionCase(S=100, T=100, attrs={"top_k": 100, "min_keys": 0, "local_window": 0, "num_sink": 0})
    got = run_case(case)
    np.testing.assert_allclose(got, knn_attention_reference(**case.inputs(), **case.op_attrs()), atol=2e-5)
    call = json.loads(tmp_stats.read_text().splitlines()[-1])
    assert call["path"] == "exact" and call["reason"].startswith("too few keys")


def test_bias_mask_runs_exact_and_says_so(tmp_stats):
    case = AttentionCase(S=64, T=300, attn_mask="bias", mask_shape="ST", attrs={"top_k": 8, "min_keys": 0})
    got = run_case(case)
    np.testing.assert_allclose(got, knn_attention_reference(**case.inputs(), **case.op_attrs()), atol=2e-5)
    call = json.loads(tmp_stats.read_text().splitlines()[-1])
    assert (call["path"], call["reason"]) == ("exact", "float attn_mask is a bias")


def test_decode_step_runs_exact(tmp_stats):
    case = AttentionCase(S=1, T=3000, is_causal=1, attrs={"top_k": 8, "min_keys": 0})
    run_case(case)
    call = json.loads(tmp_stats.read_text().splitlines()[-1])
    assert (call["path"], call["reason"]) == ("exact", "too few queries for an index")


def test_causal_rows_below_min_keys_go_exact(tmp_stats):
    case = AttentionCase(S=500, T=500, is_causal=1, attrs={"top_k": 8, "min_keys": 300, "local_window": 4, "num_sink": 1})
    run_case(case)
    call = json.loads(tmp_stats.read_text().splitlines()[-1])
    # Query i sees i + 1 keys: rows 299..499 take the k-NN path, in each of the 4 heads.
    assert call["path"] == "knn" and call["knn_rows"] == 4 * 201


DEFAULT_KNN = dict(top_k=16, local_window=8, num_sink=2, min_keys=0, max_candidates=64, tail_samples=0)


HUGE = np.float32(1e30)  # a value no weight > 0 can hide: |y| <= max |visible V| unless it is attended


def test_causal_never_attends_the_future():
    """Huge values at keys >= 150: rows that may not see them (i < 150) stay bounded by the other values."""
    case = AttentionCase(S=400, T=400, is_causal=1, attrs=DEFAULT_KNN, seed=2)
    feeds = case.inputs()
    bound = np.abs(feeds["V"]).max()
    feeds["V"][:, :, 150:] = HUGE
    (y,) = knn_session(case).run(None, feeds)
    assert np.abs(y[:, :, :150]).max() <= bound
    assert np.abs(y[:, :, 150:]).max() > 1e20


def test_padded_and_masked_keys_are_never_retrieved():
    case = AttentionCase(B=2, S=300, T=300, key_padding_mask="bool", attn_mask="bool", mask_shape="B1ST",
                         attrs={**DEFAULT_KNN, "tail_samples": 32}, seed=4)
    feeds = case.inputs()
    bound = np.abs(feeds["V"]).max()
    pad = ~feeds["key_padding_mask"].astype(bool)  # [B,T]
    feeds["V"][pad[:, None, :, None].repeat(case.Hkv, 1).repeat(case.D, 3)] = HUGE
    # Keys hidden by the mask for every query of a batch row: poison them too.
    hidden = ~feeds["attn_mask"].any(axis=(1, 2))  # [B,T]
    feeds["V"][hidden[:, None, :, None].repeat(case.Hkv, 1).repeat(case.D, 3)] = HUGE
    (y,) = knn_session(case).run(None, feeds)
    assert np.abs(y).max() <= bound


def test_same_seed_same_output_at_any_thread_count():
    case = AttentionCase(Hq=4, Hkv=2, S=700, T=700, is_causal=1, attrs={**DEFAULT_KNN, "tail_samples": 64, "seed": 7})
    y1 = run_case(case, threads=1)
    y2 = run_case(case, threads=2)
    assert np.array_equal(y1, y2)
    y3 = run_case(case.with_(attrs={**case.attrs, "seed": 8}), threads=2)
    assert not np.array_equal(y1, y3)


def test_tail_estimate_reduces_error_on_diffuse_attention():
    """Random (diffuse) data: top-16 alone drops most of the mass; 256 tail samples recover much of it."""
    base = AttentionCase(S=256, T=2048, D=32, seed=11, attrs={**EXHAUSTIVE, "top_k": 16, "tail_limit": 1.0})
    dense = knn_attention_reference(**base.inputs(), **base.op_attrs())

    def err(case):
        y = run_case(case)
        return float(np.mean(np.linalg.norm(y - dense, axis=-1) / np.linalg.norm(dense, axis=-1)))

    plain = err(base)
    tail = err(base.with_(attrs={**base.attrs, "tail_samples": 256}))
    assert tail < 0.6 * plain, (plain, tail)


def test_stats_report_candidates(tmp_stats):
    case = AttentionCase(S=256, T=1024, attrs=DEFAULT_KNN)
    run_case(case)
    call = json.loads(tmp_stats.read_text().splitlines()[-1])
    assert call["path"] == "knn" and call["knn_rows"] == case.Hq * case.S
    # Scored per query: 2 sinks + 8 window keys + up to 64 candidates from the walk.
    assert 10 < call["mean_candidates"] <= 2 + 8 + 64
    for key in ("build_ms", "search_ms", "total_ms", "p99_candidates"):
        assert call[key] >= 0


def test_tail_limit_zero_sends_every_row_with_a_tail_to_exact(tmp_stats):
    case = AttentionCase(S=256, T=600, D=32, seed=3,
                         attrs={**DEFAULT_KNN, "tail_samples": 16, "tail_limit": 0.0})
    got = run_case(case)
    np.testing.assert_allclose(got, knn_attention_reference(**case.inputs(), **case.op_attrs()), atol=2e-5, rtol=1e-4)
    call = json.loads(tmp_stats.read_text().splitlines()[-1])
    assert call["path"] == "knn" and call["fallback_rows"] == call["knn_rows"] == case.Hq * case.S


def test_synthetic_peaked_recall():
    """Clustered keys, queries near a cluster: low-rank retrieval at default budgets finds the exact top-k."""
    from iceformer.tools.recall import recall_at_k

    rng = np.random.default_rng(0)
    n, d = 3000, 64
    centres = rng.standard_normal((48, d)).astype(np.float32) * 1.5
    k = (centres[rng.integers(0, 48, n)] + rng.standard_normal((n, d))).astype(np.float32)
    q = (centres[rng.integers(0, 48, 400)] + rng.standard_normal((400, d))).astype(np.float32)
    recall = recall_at_k(q, k, range(400), is_causal=0, top_k=32, local_window=0, num_sink=0)
    assert recall >= 0.95, recall


def test_exporter_style_causal_mask_acts_like_is_causal(tmp_stats):
    """A [1,1,S,T] float mask of 0 / float-min (how Hugging Face exports pass causality) is a pure mask: it takes
    the k-NN path and gives what is_causal=1 gives."""
    case = AttentionCase(S=300, T=300, seed=8, attrs={**DEFAULT_KNN, "tail_samples": 32, "tail_limit": 1.0})
    feeds = case.inputs()
    tri = np.tril(np.ones((300, 300), bool))
    mask = np.where(tri, 0.0, np.finfo(np.float32).min).astype(np.float32)[None, None]
    (with_mask,) = knn_session(case.with_(attn_mask="float")).run(None, {**feeds, "attn_mask": mask})
    call = json.loads(tmp_stats.read_text().splitlines()[-1])
    assert call["path"] == "knn"
    (causal,) = knn_session(case.with_(is_causal=1)).run(None, feeds)
    np.testing.assert_allclose(with_mask, causal, atol=1e-5, rtol=1e-5)
