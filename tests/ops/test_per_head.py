"""Per-head k-NN settings (attributes head_budgets, head_tail_samples): each query head runs exactly as a node with
its own scalar settings would, in both ops, prefill and decode; lists of the wrong length are refused."""

import json

import numpy as np
import onnxruntime as ort
import pytest
from iceformer.ops import knn_attention_reference, make_gqa_model, session_options
from iceformer.ops.cases import AttentionCase

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
