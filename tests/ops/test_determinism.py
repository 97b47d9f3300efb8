"""Determinism: for every op and path, the same inputs and seed give the same bits at 1, 2 and 4 threads, on a
second run of the same session, and in another process (run with 3 threads). Tasks write only their own output
rows and merge partial results in a fixed order, so the thread count cannot change the arithmetic. Within every SIMD
tier this CPU runs, likewise at 1 and 3 threads.

`python tests/ops/test_determinism.py THREADS` prints the output digests of every case (the other process)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from iceformer.ops import make_gqa_model, make_knn_attention_model, session_options, simd_tiers, simd_variant
from iceformer.ops.cases import AttentionCase

KNN = dict(top_k=8, local_window=8, num_sink=2, max_candidates=8, tail_samples=64, tail_limit=1.0, min_keys=0, seed=7)


def _gqa_feeds(B, S, P, Hq, Hkv, D, seed):
    rng = np.random.default_rng(seed)
    f = np.float32
    lens = [P + S - 3 * b for b in range(B)]  # batch rows of different lengths
    angles = rng.random((P + S + 8, D // 4)).astype(f) * 3
    return {
        "query": rng.standard_normal((B, S, Hq * D)).astype(f),
        "key": rng.standard_normal((B, S, Hkv * D)).astype(f),
        "value": rng.standard_normal((B, S, Hkv * D)).astype(f),
        "past_key": rng.standard_normal((B, Hkv, P, D)).astype(f),
        "past_value": rng.standard_normal((B, Hkv, P, D)).astype(f),
        "seqlens_k": np.asarray(lens, np.int32) - 1,
        "total_sequence_length": np.array([max(lens)], np.int32),
        "cos_cache": np.cos(angles),
        "sin_cache": np.sin(angles),
    }


def _knn(case: AttentionCase):
    mask = None if case.attn_mask is None else ("bool" if case.attn_mask == "bool" else "float")
    model = make_knn_attention_model(attn_mask=mask, key_padding_mask=case.key_padding_mask, **case.op_attrs())
    return model, case.inputs()


def _gqa(B, S, P, **attrs):
    model = make_gqa_model(num_heads=4, kv_num_heads=2, past=True, rotary=True, **attrs)
    return model, _gqa_feeds(B, S, P, 4, 2, 64, seed=S + P)


# Every op and path (the path each must take, checked): KnnAttention exact (padding, bool mask), low-rank k-NN
# (with tail samples, which the seed draws), DCI k-NN; GroupQueryAttention prefill exact and k-NN, chunked
# prefill, a few new rows and decode over the cache.
CASES = {
    "knn-op exact, key padding": (
        "exact",
        lambda: _knn(AttentionCase(B=2, Hq=6, Hkv=3, S=700, T=900, is_causal=1, key_padding_mask="bool")),
    ),
    "knn-op exact, bool mask": ("exact", lambda: _knn(AttentionCase(Hq=4, Hkv=2, S=300, T=500, attn_mask="bool"))),
    "knn-op low-rank k-NN": (
        "knn",
        lambda: _knn(AttentionCase(Hq=4, Hkv=2, S=2500, T=2500, D=32, is_causal=1, attrs=KNN)),
    ),
    "knn-op DCI k-NN": (
        "knn",
        lambda: _knn(AttentionCase(Hq=2, Hkv=1, S=1200, T=1500, D=32, attrs={**KNN, "search": 1})),
    ),
    "gqa-op prefill exact": ("exact", lambda: _gqa(2, 700, 0)),
    "gqa-op prefill k-NN": ("knn", lambda: _gqa(1, 2400, 0, **KNN)),
    "gqa-op chunked prefill": ("exact", lambda: _gqa(2, 96, 700)),
    "gqa-op speculative (5 new rows)": ("exact", lambda: _gqa(2, 5, 1500)),
    "gqa-op decode": ("exact", lambda: _gqa(2, 1, 3000)),
}


def digest(outputs) -> str:
    h = hashlib.sha256()
    for o in outputs:
        h.update(np.ascontiguousarray(o).tobytes())
    return h.hexdigest()


def run(name: str, threads: int, repeats: int = 1) -> list[str]:
    model, feeds = CASES[name][1]()
    sess = ort.InferenceSession(model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])
    return [digest(sess.run(None, feeds)) for _ in range(repeats)]


@pytest.fixture(scope="module")
def other_process() -> dict[str, str]:
    res = subprocess.run([sys.executable, __file__, "3"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


@pytest.mark.parametrize("name", list(CASES))
def test_same_bits_at_any_thread_count_and_across_runs(name, other_process, tmp_stats):
    one = run(name, 1)[0]
    assert json.loads(tmp_stats.read_text().splitlines()[-1])["path"] == CASES[name][0]
    assert run(name, 2) == [one]
    assert run(name, 4, repeats=2) == [one, one]
    assert other_process[name] == one


@pytest.mark.parametrize("tier", [t for t in simd_tiers() if t != simd_variant()])
def test_same_bits_at_any_thread_count_in_every_other_tier(tier):
    """The tiers this CPU runs besides the default (forced per process): 1 and 3 threads give the same bits."""
    digests = []
    for threads in (1, 3):
        env = dict(os.environ, ICEFORMER_SIMD=tier)
        res = subprocess.run([sys.executable, __file__, str(threads)], env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]
        digests.append(json.loads(res.stdout))
    assert digests[0] == digests[1]


def test_the_seed_changes_the_k_nn_tail_sample():
    """The digests above would also agree if the seed were ignored: a different seed must change the output."""
    case = AttentionCase(Hq=4, Hkv=2, S=2500, T=2500, D=32, is_causal=1, attrs=KNN)
    a, b = (_knn(case.with_(attrs={**KNN, "seed": s})) for s in (7, 8))
    run_one = lambda mf: ort.InferenceSession(mf[0].SerializeToString(), session_options(2)).run(None, mf[1])[0]  # noqa: E731
    assert not np.array_equal(run_one(a), run_one(b))


if __name__ == "__main__":
    print(json.dumps({name: run(name, int(sys.argv[1]))[0] for name in CASES}))
