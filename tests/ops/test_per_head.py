"""Per-head k-NN settings (attributes head_budgets, head_tail_samples, head_windows): each query head runs exactly as
a node with its own scalar settings would, in both ops, prefill and decode; a streaming head attends its sinks and
window exactly (a float64 reference); lists of the wrong length are refused."""

import json

import numpy as np
import onnxruntime as ort
import pytest
from iceformer.ops import knn_attention_reference, make_gqa_model, session_options
from iceformer.ops.cases import AttentionCase
from iceformer.ops.contract import knn_threshold

from tests.support.ops import assert_close_bf16_pv, knn_session, run_case

# Random keys are diffuse: tail_limit 1 keeps the block sets (no fallback), min_keys 0 engages the path early.
BASE = dict(top_k=8, max_candidates=8, local_window=8, num_sink=2, min_keys=0, tail_samples=64, tail_limit=1.0)
CASE = AttentionCase(Hq=6, Hkv=2, S=700, T=700, D=32, is_causal=1, attrs=BASE, seed=5)
BUDGETS = [8, 0, 48, 8, 200, 16]  # head 1 exact; heads 0 and 3 share a KV head with head 1 / 4 with 5
SAMPLES = [64, 0, 256, 16, 64, 1024]


def _uniform(budget: int, samples: int) -> dict:
    """The scalar settings a per-head (budget, samples) stands for."""
    if budget == 0:
        return {"top_k": 0}
    return {"top_k": budget, "max_candidates": budget, "candidate_fraction": 0.0, "tail_samples": samples}


def test_equal_lists_are_the_scalar_settings(tmp_stats):
    got = run_case(CASE, head_budgets=[48] * 6, head_tail_samples=[256] * 6)
    want = run_case(CASE, **_uniform(48, 256))
    np.testing.assert_array_equal(got, want)
    assert json.loads(tmp_stats.read_text().splitlines()[-1])["path"] == "knn"


def test_each_head_runs_with_its_own_settings(tmp_stats):
    """Heads are independent tasks (their sets, samples and seeds depend on the head alone): head h of the per-head
    run is bit-identical to head h of a run with h's settings for every head, and budget 0 is exact attention."""
    got = run_case(CASE, head_budgets=BUDGETS, head_tail_samples=SAMPLES)
    for h, (b, s) in enumerate(zip(BUDGETS, SAMPLES)):
        attrs = {"head_budgets": [0] * 6} if b == 0 else _uniform(b, s)
        want = run_case(CASE, **attrs)
        np.testing.assert_array_equal(got[:, h], want[:, h], err_msg=f"head {h}")
    x = CASE.inputs()
    ref = knn_attention_reference(**x, **CASE.op_attrs())
    ref_abs = knn_attention_reference(**{**x, "V": np.abs(x["V"])}, **CASE.op_attrs())
    assert_close_bf16_pv(got[:, 1], ref[:, 1], ref_abs[:, 1])  # the exact head, within P V's bfloat16 rounding
    assert np.abs(got[:, 0] - ref[:, 0]).max() > 1e-3  # a k-NN head with 8 keys is not exact on diffuse keys


def test_lists_of_the_wrong_length_are_refused():
    sess = knn_session(CASE, head_budgets=[8] * 5)
    with pytest.raises(Exception, match=r"head_budgets has 5 values, expected one per query head \(Hq=6\) or none"):
        sess.run(None, CASE.inputs())
    model = make_gqa_model(num_heads=4, kv_num_heads=2, head_tail_samples=[64] * 3)
    with pytest.raises(Exception, match=r"head_tail_samples has 3 values, expected one per query head \(Hq=4\)"):
        ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])


WINDOWS = [0, 0, 96, 0, 0, 200]  # heads 2 and 5 stream (their budgets and samples unused)
KNN_BLOCK, MAX_UNION_COST = 64, 0.7  # the k-NN path's query blocks and its cost rule (union_attention.cc)


def _streaming_reference(q, k, v, window: int, num_sink: int, first_knn: int) -> np.ndarray:
    """A streaming head's causal output in float64 (q [S, D], k / v [T, D], S = T): the k-NN rows of a 64-row query
    block (rows >= first_knn; i0 its first) attend keys j < num_sink and i0 - window < j <= i, unless that set costs
    more than 0.7 x the block's exact scores (rows x keys against the sum of the rows' visible keys): then, like the
    rows before first_knn, every visible key."""
    S, D = q.shape
    z = (q.astype(np.float64) @ k.T.astype(np.float64)) / np.sqrt(D)
    keep = np.tril(np.ones((S, S), bool))
    for b0 in range(0, S, KNN_BLOCK):
        i0, i1 = max(b0, first_knn), min(S, b0 + KNN_BLOCK)
        if i0 >= i1:
            continue
        cols = np.arange(S)
        in_set = (cols < num_sink) | ((cols > i0 - window) & (cols < i1))
        if (i1 - i0) * in_set.sum() <= MAX_UNION_COST * sum(i + 1 for i in range(i0, i1)):
            keep[i0:i1] &= in_set[None, :]
    z = np.where(keep, z, -np.inf)
    p = np.exp(z - z.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True)) @ v.astype(np.float64)


def test_streaming_heads_attend_sinks_and_window():
    got = run_case(CASE, head_budgets=BUDGETS, head_tail_samples=SAMPLES, head_windows=WINDOWS)
    x = CASE.inputs()
    first_knn = knn_threshold(CASE.op_attrs()) - 1
    for h, w in enumerate(WINDOWS):
        if w == 0:  # the other heads run their own settings, bit for bit
            b, s = BUDGETS[h], SAMPLES[h]
            want = run_case(CASE, **({"head_budgets": [0] * 6} if b == 0 else _uniform(b, s)))
            np.testing.assert_array_equal(got[:, h], want[:, h], err_msg=f"head {h}")
            continue
        kv = h // (CASE.Hq // CASE.Hkv)
        args = (x["Q"][0, h], x["K"][0, kv], x["V"][0, kv], w, BASE["num_sink"], first_knn)
        ref, ref_abs = _streaming_reference(*args), _streaming_reference(*args[:2], np.abs(args[2]), *args[3:])
        assert_close_bf16_pv(got[0, h], ref, ref_abs)
        full = knn_attention_reference(**x, **CASE.op_attrs())[0, h]
        assert np.abs(got[0, h, 400:] - full[400:]).max() > 1e-3  # the window left keys out (diffuse random keys)


def _gqa_run(attrs: dict, P: int, S: int, seed: int = 3) -> np.ndarray:
    """One GroupQueryAttention call (Hq 4, Hkv 2, D 32) on a random cache of P rows and S new rows."""
    Hq, Hkv, D = 4, 2, 32
    rng = np.random.default_rng(seed)
    model = make_gqa_model(num_heads=Hq, kv_num_heads=Hkv, **attrs)
    sess = ort.InferenceSession(model.SerializeToString(), session_options(2), providers=["CPUExecutionProvider"])
    f = np.float32
    feeds = {
        "query": rng.standard_normal((1, S, Hq * D)).astype(f),
        "key": rng.standard_normal((1, S, Hkv * D)).astype(f),
        "value": rng.standard_normal((1, S, Hkv * D)).astype(f),
        "past_key": rng.standard_normal((1, Hkv, P, D)).astype(f),
        "past_value": rng.standard_normal((1, Hkv, P, D)).astype(f),
        "seqlens_k": np.array([P + S - 1], np.int32),
        "total_sequence_length": np.array([P + S], np.int32),
    }
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def test_gqa_chunk_heads_run_with_their_own_settings():
    """GroupQueryAttention reads the same lists; a prefill chunk over a cache runs each head with its own (decode's
    group rule: tests/ops/test_decode_knn.py)."""
    base = {**BASE, "decode_min_keys": 0}
    budgets, samples = [8, 48, 16, 0], [64, 16, 64, 64]
    S = 100
    got = _gqa_run({**base, "head_budgets": budgets, "head_tail_samples": samples}, P=600, S=S).reshape(1, S, 4, 32)
    exact = _gqa_run({**base, "top_k": 0}, P=600, S=S).reshape(1, S, 4, 32)
    assert np.abs(got[:, :, 0] - exact[:, :, 0]).max() > 1e-3  # the k-NN path ran (8 keys: not exact on random keys)
    for h in range(4):
        attrs = {"head_budgets": [0] * 4} if budgets[h] == 0 else _uniform(budgets[h], samples[h])
        want = _gqa_run({**base, **attrs}, P=600, S=S).reshape(1, S, 4, 32)
        np.testing.assert_array_equal(got[:, :, h], want[:, :, h], err_msg=f"head {h}")
