"""The k-NN path: semantics against float64 references, masks, causality, determinism."""

import json

import numpy as np
import pytest
from iceformer.ops import contract, knn_attention_reference
from iceformer.ops._library import knn_select
from iceformer.ops.cases import AttentionCase
from iceformer.ops.reference import topk_attention_reference

from tests.support.ops import assert_close_bf16_pv, knn_session, run_case

# Settings that make every visible key a candidate. The DCI walk (search=1) is then exhaustive and must equal the
# perfect-search reference (top_k + window + sinks) up to float32 rounding; the low-rank search (search=0) attends
# the union of its block's candidates, here every visible key, so it equals exact attention up to the bfloat16
# rounding of P V (or exactly, where the block's set does not pay and the block runs the exact tiles).
EXHAUSTIVE = dict(top_k=16, local_window=8, num_sink=2, min_keys=0, max_candidates=1 << 20, tail_samples=0)

DCI_GRID = [
    AttentionCase(S=80, T=150, D=48, Dv=20, attrs={**EXHAUSTIVE, "search": 1, "L": 3, "m": 3}),
    AttentionCase(S=120, T=120, is_causal=1, key_padding_mask="bool", B=2, attrs={**EXHAUSTIVE, "search": 1}),
    AttentionCase(Hq=6, Hkv=2, S=96, T=300, is_causal=1, attrs={**EXHAUSTIVE, "search": 1}),
    AttentionCase(S=64, T=180, attn_mask="bool", mask_shape="1HST", attrs={**EXHAUSTIVE, "search": 1}),
    AttentionCase(S=150, T=150, is_causal=1, attrs={**EXHAUSTIVE, "search": 1, "local_window_size": 90}),
]
LOWRANK_GRID = [
    AttentionCase(S=200, T=200, D=32, attrs=EXHAUSTIVE),
    AttentionCase(Hq=6, Hkv=2, S=96, T=300, is_causal=1, attrs=EXHAUSTIVE),  # GQA, causal with offset
    AttentionCase(B=2, S=64, T=250, key_padding_mask="bool", attrs=EXHAUSTIVE),
    AttentionCase(S=64, T=180, attn_mask="float", mask_shape="ST", attrs=EXHAUSTIVE),
    AttentionCase(S=80, T=150, D=48, Dv=20, attrs={**EXHAUSTIVE, "rank": 5}),
    AttentionCase(S=200, T=200, is_causal=1, attrs={**EXHAUSTIVE, "local_window_size": 150}),  # hard window
    AttentionCase(
        B=2, S=96, T=300, is_causal=1, key_padding_mask="bool", attrs={**EXHAUSTIVE, "local_window_size": 120}
    ),
]


@pytest.mark.parametrize("case", DCI_GRID, ids=lambda c: c.label())
def test_exhaustive_dci_equals_perfect_topk(case, tmp_stats):
    inputs = case.inputs()
    got = run_case(case)
    ref = topk_attention_reference(**inputs, **case.op_attrs())
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)
    calls = [json.loads(line) for line in tmp_stats.read_text().splitlines()]
    assert calls[-1]["path"] == "knn"


@pytest.mark.parametrize("case", LOWRANK_GRID, ids=lambda c: c.label())
def test_exhaustive_lowrank_equals_exact(case, tmp_stats):
    got = run_case(case)
    x = case.inputs()
    ref = knn_attention_reference(**x, **case.op_attrs())
    assert_close_bf16_pv(got, ref, knn_attention_reference(**{**x, "V": np.abs(x["V"])}, **case.op_attrs()))
    assert json.loads(tmp_stats.read_text().splitlines()[-1])["path"] == "knn"


# Sparse enough that each 64-row block's key set stays well below the cost at which the block goes exact.
SPARSE = dict(top_k=8, max_candidates=8, local_window=8, num_sink=2, min_keys=0, tail_samples=0)


def _set_attention(q, k, v, sets, counts, scale):
    """float64 softmax attention of each row over exactly its reported key set (v: [T, Dv])."""
    out = np.zeros((q.shape[0], v.shape[1]))
    for i in range(q.shape[0]):
        ids = sets[i, : counts[i]]
        z = (k[ids].astype(np.float64) @ q[i].astype(np.float64)) * scale
        w = np.exp(z - z.max())
        out[i] = w @ v[ids].astype(np.float64) / w.sum()
    return out


@pytest.mark.parametrize("is_causal", [0, 1])
def test_lowrank_rows_attend_exactly_their_block_set(is_causal, tmp_stats):
    """Each row attends exactly the keys of its block's set it may see (as reported by the introspection entry
    point), and the statistics count exactly those keys."""
    case = AttentionCase(Hq=1, Hkv=1, S=192, T=2048, D=32, is_causal=is_causal, seed=5, attrs=SPARSE)
    x = case.inputs()
    y = run_case(case)[0, 0]
    call = json.loads(tmp_stats.read_text().splitlines()[-1])
    q, k, v = x["Q"][0, 0], x["K"][0, 0], x["V"][0, 0]
    sets, counts = knn_select(q, k, is_causal=is_causal, **SPARSE)
    assert (counts < (2048 - 192 * is_causal) // 2).all()  # the sets are sparse: the union path really ran
    assert_close_bf16_pv(
        y, _set_attention(q, k, v, sets, counts, 32**-0.5), _set_attention(q, k, np.abs(v), sets, counts, 32**-0.5)
    )
    assert call["path"] == "knn" and call["fallback_rows"] == 0 and call["knn_rows"] == 192
    assert call["mean_candidates"] == pytest.approx(counts.mean(), rel=1e-6)
    # Every row's set holds its window and sinks.
    for i in range(192):
        last = i + 2048 - 192 if is_causal else 2047
        assert set(range(last - 7, last + 1)) | {0, 1} <= set(sets[i, : counts[i]].tolist())


def test_topk_covering_all_keys_takes_the_exact_path(tmp_stats):
    case = AttentionCase(S=100, T=100, attrs={"top_k": 100, "min_keys": 0, "local_window": 0, "num_sink": 0})
    got = run_case(case)
    np.testing.assert_allclose(got, knn_attention_reference(**case.inputs(), **case.op_attrs()), atol=2e-5)
    call = json.loads(tmp_stats.read_text().splitlines()[-1])
    assert call["path"] == "exact" and call["reason"].startswith("too few keys")


@pytest.mark.parametrize(
    "attrs",
    [{"top_k": 16, "min_keys": 0, "local_window": 8, "num_sink": 2}, {"top_k": 8, "min_keys": 300}],
    ids=["by top_k + local_window + num_sink + 1", "by min_keys"],
)
def test_native_knn_threshold_is_the_contracts(tmp_stats, attrs):
    """The driver takes the k-NN path from exactly contract.knn_threshold(attrs) keys (non-causal: every row sees T),
    and the causal rows below it attend to every key."""
    threshold = contract.knn_threshold(attrs)
    for T, path in ((threshold - 1, "exact"), (threshold, "knn")):
        run_case(AttentionCase(Hq=2, Hkv=1, S=64, T=T, attrs=attrs))
        assert json.loads(tmp_stats.read_text().splitlines()[-1])["path"] == path, T
    run_case(AttentionCase(Hq=2, Hkv=1, S=64, T=threshold + 20, is_causal=1, attrs=attrs))
    call = json.loads(tmp_stats.read_text().splitlines()[-1])
    assert call["path"] == "knn" and call["knn_rows"] == 2 * 21  # rows seeing threshold .. threshold + 20 keys


def test_bias_mask_runs_exact_and_says_so(tmp_stats):
    case = AttentionCase(S=64, T=300, attn_mask="bias", mask_shape="ST", attrs={"top_k": 8, "min_keys": 0})
    got = run_case(case)
    np.testing.assert_allclose(got, knn_attention_reference(**case.inputs(), **case.op_attrs()), atol=2e-5)
    call = json.loads(tmp_stats.read_text().splitlines()[-1])
    assert (call["path"], call["reason"]) == ("exact", "float attn_mask is a bias")


def test_decode_step_on_diffuse_keys_runs_flash_decoding(tmp_stats):
    """A decode step (S = 1) takes the k-NN decode path's index (built here: no prompt came first); on i.i.d. keys
    the retrieved set would cover most keys, so the group declines to flash decoding: the exact answer."""
    case = AttentionCase(S=1, T=3000, is_causal=1, attrs={"top_k": 8, "min_keys": 0, "decode_min_keys": 0})
    got = run_case(case)
    np.testing.assert_allclose(
        got, knn_attention_reference(**case.inputs(), **{**case.op_attrs(), "top_k": 0}), atol=2e-5
    )
    call = json.loads(tmp_stats.read_text().splitlines()[-1])
    assert call["path"] == "exact" and call["reason"].startswith("decode: flash decoding")
    assert call["index_rebuilds"] == case.B * case.Hkv


def test_causal_rows_below_min_keys_go_exact(tmp_stats):
    case = AttentionCase(
        S=500, T=500, is_causal=1, attrs={"top_k": 8, "min_keys": 300, "local_window": 4, "num_sink": 1}
    )
    run_case(case)
    call = json.loads(tmp_stats.read_text().splitlines()[-1])
    # Query i sees i + 1 keys: rows 299..499 take the k-NN path, in each of the 4 heads.
    assert call["path"] == "knn" and call["knn_rows"] == 4 * 201


# tail_limit 1: random data is diffuse, and these tests want the sets and samples, not the exact fallback.
DEFAULT_KNN = dict(top_k=8, local_window=8, num_sink=2, min_keys=0, max_candidates=8, tail_samples=0, tail_limit=1.0)


HUGE = np.float32(1e30)  # a value no weight > 0 can hide: |y| <= max |visible V| unless it is attended


def _sparse_run(tmp_stats):
    """The last call's statistics, checked to have run the block sets (not the exact fallback) for a quarter of the rows
    at least (early causal blocks, whose sets would cover most of the few keys they see, go exact)."""
    call = json.loads(tmp_stats.read_text().splitlines()[-1])
    assert call["path"] == "knn" and call["fallback_rows"] < 0.75 * call["knn_rows"], call
    return call


def test_causal_never_attends_the_future(tmp_stats):
    """Huge values at keys >= 1500: rows that may not see them (i < 1500) stay bounded by the other values."""
    case = AttentionCase(
        Hq=2, Hkv=2, S=2400, T=2400, D=32, is_causal=1, attrs={**DEFAULT_KNN, "tail_samples": 64}, seed=2
    )
    feeds = case.inputs()
    bound = np.abs(feeds["V"]).max()
    feeds["V"][:, :, 1500:] = HUGE
    (y,) = knn_session(case).run(None, feeds)
    _sparse_run(tmp_stats)
    assert np.abs(y[:, :, :1500]).max() <= bound
    assert np.abs(y[:, :, 1500:]).max() > 1e20


def test_padded_and_masked_keys_are_never_retrieved(tmp_stats):
    case = AttentionCase(
        B=2,
        Hq=2,
        Hkv=2,
        S=256,
        T=3000,
        D=32,
        key_padding_mask="bool",
        attn_mask="bool",
        mask_shape="B1ST",
        attrs={**DEFAULT_KNN, "tail_samples": 64},
        seed=4,
    )
    feeds = case.inputs()
    bound = np.abs(feeds["V"]).max()
    pad = ~feeds["key_padding_mask"].astype(bool)  # [B,T]
    assert pad.sum() > 500
    feeds["V"][pad[:, None, :, None].repeat(case.Hkv, 1).repeat(case.D, 3)] = HUGE
    # Keys hidden by the mask for every query of a batch row: poison them too.
    feeds["attn_mask"][:, :, :, 100:140] = False
    hidden = ~feeds["attn_mask"].any(axis=(1, 2))  # [B,T]
    feeds["V"][hidden[:, None, :, None].repeat(case.Hkv, 1).repeat(case.D, 3)] = HUGE
    (y,) = knn_session(case).run(None, feeds)
    _sparse_run(tmp_stats)
    assert np.abs(y).max() <= bound


def test_tail_estimate_is_unbiased(tmp_stats):
    """Random (diffuse) data: the block sets alone hold a third of the keys and miss much of the mass. One tail
    sample is noisy, but it is unbiased: averaged over 32 seeds the error falls to a fraction of the sets' alone
    (measured 1.99 -> 0.52 relative error; the sets' error is a bias that no averaging removes)."""
    base = AttentionCase(Hq=1, Hkv=1, S=64, T=4096, D=32, seed=11, attrs={**DEFAULT_KNN, "tail_limit": 1.0})
    dense = knn_attention_reference(**base.inputs(), **base.op_attrs())

    def err(y):
        return float(np.mean(np.linalg.norm(y - dense, axis=-1) / np.linalg.norm(dense, axis=-1)))

    plain = err(run_case(base))
    _sparse_run(tmp_stats)
    runs = [run_case(base.with_(attrs={**base.attrs, "tail_samples": 256, "seed": s})) for s in range(32)]
    _sparse_run(tmp_stats)
    assert err(np.mean(runs, axis=0)) < 0.35 * plain, (plain, err(np.mean(runs, axis=0)))


def test_tail_limit_zero_sends_every_row_with_a_tail_to_exact(tmp_stats):
    case = AttentionCase(
        Hq=1, Hkv=1, S=256, T=3000, D=32, seed=3, attrs={**DEFAULT_KNN, "tail_samples": 16, "tail_limit": 0.0}
    )
    got, x = run_case(case), case.inputs()
    ref = knn_attention_reference(**x, **case.op_attrs())
    assert_close_bf16_pv(got, ref, knn_attention_reference(**{**x, "V": np.abs(x["V"])}, **case.op_attrs()))
    call = json.loads(tmp_stats.read_text().splitlines()[-1])
    assert call["path"] == "knn" and call["fallback_rows"] == call["knn_rows"] == case.Hq * case.S


def test_synthetic_peaked_recall():
    """Clustered keys, queries near a cluster: low-rank retrieval at default budgets finds the exact top-k."""
    from iceformer.metrics import recall_at_k

    rng = np.random.default_rng(0)
    n, d = 3000, 64
    centres = rng.standard_normal((48, d)).astype(np.float32) * 1.5
    k = (centres[rng.integers(0, 48, n)] + rng.standard_normal((n, d))).astype(np.float32)
    q = (centres[rng.integers(0, 48, 400)] + rng.standard_normal((400, d))).astype(np.float32)
    recall = recall_at_k(q, k, range(400), is_causal=0, top_k=32, local_window=0, num_sink=0, min_keys=0)
    assert recall >= 0.95, recall


def test_lowrank_retrieval_follows_the_queries_not_only_the_keys():
    """Keys vary 10x more in dims 0-47 than in 48-63, and the queries live in dims 48-63 only: the best 16 directions
    of the keys alone carry none of the logits (retrieval would be by chance, recall ~ the attended share), the
    query-aware factorisation keeps exactly the 16 that matter."""
    from iceformer.metrics import recall_at_k

    rng = np.random.default_rng(3)
    n, d = 4000, 64
    k = rng.standard_normal((n, d)).astype(np.float32)
    k[:, :48] *= 10.0
    q = np.zeros((256, d), np.float32)
    q[:, 48:] = rng.standard_normal((256, 16))
    attrs = dict(rank=16, top_k=16, max_candidates=16, local_window=0, num_sink=0, min_keys=0, tail_samples=0)
    _, counts = knn_select(q, k, is_causal=0, rows=np.arange(256), **attrs)
    assert counts.mean() < 0.4 * n  # chance would find under 40% of the top keys
    assert recall_at_k(q, k, range(256), is_causal=0, **attrs) >= 0.95


def test_exporter_style_causal_mask_acts_like_is_causal(tmp_stats):
    """A [1,1,S,T] float mask of 0 / float-min (how Hugging Face exports pass causality) is a pure mask: it takes
    the k-NN path and gives what is_causal=1 gives."""
    case = AttentionCase(
        Hq=2, Hkv=2, S=2000, T=2000, D=32, seed=8, attrs={**DEFAULT_KNN, "tail_samples": 32, "tail_limit": 1.0}
    )
    feeds = case.inputs()
    tri = np.tril(np.ones((2000, 2000), bool))
    mask = np.where(tri, 0.0, np.finfo(np.float32).min).astype(np.float32)[None, None]
    (with_mask,) = knn_session(case.with_(attn_mask="float")).run(None, {**feeds, "attn_mask": mask})
    _sparse_run(tmp_stats)
    (causal,) = knn_session(case.with_(is_causal=1)).run(None, feeds)
    np.testing.assert_allclose(with_mask, causal, atol=1e-5, rtol=1e-5)


def test_introspection_of_selected_rows_matches_all_rows():
    """knn_select(rows=...) computes only the blocks of those rows and reports what the full call reports."""
    case = AttentionCase(Hq=1, Hkv=1, S=192, T=2048, D=32, is_causal=1, seed=6, attrs=SPARSE)
    x = case.inputs()
    q, k = x["Q"][0, 0], x["K"][0, 0]
    all_ids, all_counts = knn_select(q, k, is_causal=1, **SPARSE)
    rows = np.array([5, 70, 71, 190])
    ids, counts = knn_select(q, k, is_causal=1, rows=rows, **SPARSE)
    np.testing.assert_array_equal(counts, all_counts[rows])
    np.testing.assert_array_equal(ids, all_ids[rows])
    with pytest.raises(ValueError, match="strictly ascending"):
        knn_select(q, k, is_causal=1, rows=[70, 5], **SPARSE)


@pytest.mark.parametrize("search", [0, 1], ids=["lowrank", "dci"])
def test_knn_path_never_attends_outside_the_hard_window(search, tmp_stats):
    """Keys before the window are made the best match of every query (logits ~ +60) with values of 1000: a k-NN
    path that retrieved, sampled or attended one of them would be off by hundreds; honouring the window, it stays
    within the usual k-NN error of the windowed exact answer."""
    W = 700
    case = AttentionCase(
        S=1536, T=1536, D=32, is_causal=1, seed=3, attrs={"min_keys": 0, "local_window_size": W, "search": search}
    )
    inputs = case.inputs()
    q_dir = inputs["Q"].mean(axis=(0, 1, 2))
    q_dir /= np.linalg.norm(q_dir)
    inputs["K"][:, :, :200] = 60.0 * q_dir * np.sqrt(case.D) / np.linalg.norm(inputs["Q"], axis=-1).mean()
    inputs["V"][:, :, :200] = 1000.0
    got = knn_session(case).run(None, inputs)[0]
    assert json.loads(tmp_stats.read_text().splitlines()[-1])["path"] == "knn"
    ref = knn_attention_reference(**inputs, **case.op_attrs())
    rows = slice(200 + W, None)  # rows whose window starts after the planted keys
    assert np.abs(got[:, :, rows]).max() < 10.0  # values are N(0, 1): any planted key would dominate
    err = np.linalg.norm(got[:, :, rows] - ref[:, :, rows], axis=-1) / np.linalg.norm(ref[:, :, rows], axis=-1)
    assert np.median(err) < 0.1, np.median(err)
    exact = knn_attention_reference(**inputs, **{**case.op_attrs(), "local_window_size": -1})
    assert np.abs(exact[:, :, rows]).max() > 100  # without the window the planted keys do dominate


def test_hard_window_below_the_knn_threshold_runs_exact(tmp_stats):
    case = AttentionCase(S=600, T=600, is_causal=1, attrs={"min_keys": 512, "local_window_size": 300})
    got = run_case(case)
    np.testing.assert_allclose(got, knn_attention_reference(**case.inputs(), **case.op_attrs()), atol=2e-5, rtol=1e-4)
    call = json.loads(tmp_stats.read_text().splitlines()[-1])
    assert call["path"] == "exact" and "hard window" in call["reason"]


@pytest.mark.parametrize("search", [0, 1], ids=["lowrank", "dci"])
def test_introspection_follows_the_op_on_tail_fallback_and_min_keys(search, tmp_stats):
    """knn_select runs the op's driver: rows the tail test sends back to exact report every key they may see (as
    many as the call's fallback count), and a min_keys above the keys makes every row exact (nothing reported)."""
    attrs = {**SPARSE, "search": search, "tail_samples": 256, "tail_limit": 0.02}
    case = AttentionCase(Hq=1, Hkv=1, S=192, T=2048, D=32, is_causal=1, seed=7, attrs=attrs)
    x = case.inputs()
    run_case(case)
    call = json.loads(tmp_stats.read_text().splitlines()[-1])
    q, k = x["Q"][0, 0], x["K"][0, 0]
    sets, counts = knn_select(q, k, is_causal=1, **attrs)
    visible = np.arange(192) + 2048 - 192 + 1
    exact_rows = counts == visible
    assert call["fallback_rows"] > 0 and exact_rows.sum() == call["fallback_rows"], (call, exact_rows.sum())
    for i in np.flatnonzero(exact_rows)[:3]:
        np.testing.assert_array_equal(sets[i, : counts[i]], np.arange(visible[i]))
    _, counts = knn_select(q, k, is_causal=1, **{**attrs, "min_keys": 4096})
    assert not counts.any()
