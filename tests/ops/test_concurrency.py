"""Concurrency and long-running processes: ORT allows concurrent Run on one session, and our kernels keep
per-thread scratch (thread_local, grown to the largest tile a thread has seen, never shared). Four Python threads on
one session, and sessions with different attributes side by side, give exactly the serial outputs; a thousand
calls of mixed sizes leave the resident memory flat."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
from iceformer.ops import _library, make_gqa_model, make_knn_attention_model, session_options
from iceformer.ops.cases import AttentionCase
from iceformer.tools.e2e_worker import rss_mib

KNN = dict(top_k=8, local_window=8, num_sink=2, max_candidates=8, tail_samples=64, tail_limit=1.0, min_keys=0, seed=3)
SIZES = [(64, 64), (300, 700), (1000, 1000), (2100, 2100), (40, 1500)]  # (S, T): exact and k-NN calls, mixed


def _session(model, threads=2):
    return ort.InferenceSession(model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])


def _knn_session(**attrs):
    return _session(make_knn_attention_model(is_causal=1, **attrs))


def _knn_feeds(i):
    S, T = SIZES[i % len(SIZES)]
    return AttentionCase(Hq=4, Hkv=2, S=S, T=T, D=32, seed=i).inputs()


def _gqa_feeds(i):
    rng = np.random.default_rng(i)
    f = np.float32
    S, P = [(1, 900), (64, 0), (7, 300), (600, 0)][i % 4]
    return {
        "query": rng.standard_normal((1, S, 4 * 64)).astype(f),
        "key": rng.standard_normal((1, S, 2 * 64)).astype(f),
        "value": rng.standard_normal((1, S, 2 * 64)).astype(f),
        "past_key": rng.standard_normal((1, 2, P, 64)).astype(f),
        "past_value": rng.standard_normal((1, 2, P, 64)).astype(f),
        "seqlens_k": np.array([P + S - 1], np.int32),
        "total_sequence_length": np.array([P + S], np.int32),
    }


def _runs(sess, feeds_of, calls):
    return [sess.run(None, feeds_of(i)) for i in calls]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("kind", ["knn-op exact", "knn-op k-NN", "gqa-op"])
def test_one_session_from_four_threads(kind):
    sess = {
        "knn-op exact": lambda: _knn_session(),
        "knn-op k-NN": lambda: _knn_session(**KNN),
        "gqa-op": lambda: _session(make_gqa_model(num_heads=4, kv_num_heads=2, past=True, **KNN)),
    }[kind]()
    feeds_of = _gqa_feeds if kind == "gqa-op" else _knn_feeds
    calls = range(40)
    serial = _runs(sess, feeds_of, calls)
    with ThreadPoolExecutor(4) as pool:  # thread t runs calls t, t+4, ...: all sizes on every thread, at once
        parts = list(pool.map(lambda t: (t, _runs(sess, feeds_of, calls[t::4])), range(4)))
    for t, outs in parts:
        for i, out in zip(calls[t::4], outs):
            assert _same(out, serial[i]), (kind, t, i)


def test_sessions_with_different_attributes_side_by_side():
    sessions = {
        "exact": _knn_session(),
        "low-rank": _knn_session(**KNN),
        "dci": _knn_session(**{**KNN, "search": 1}),
        "other seed": _knn_session(**{**KNN, "seed": 4}),
        "one thread": _knn_session(**KNN),
    }
    serial = {name: _runs(s, _knn_feeds, range(10)) for name, s in sessions.items()}
    assert not _same(serial["low-rank"][3], serial["other seed"][3])  # the attributes really differ
    with ThreadPoolExecutor(len(sessions)) as pool:
        concurrent = dict(pool.map(lambda kv: (kv[0], _runs(kv[1], _knn_feeds, range(10))), sessions.items()))
    for name in sessions:
        assert all(_same(a, b) for a, b in zip(concurrent[name], serial[name])), name


@pytest.mark.skipif(_library.sanitized(), reason="AddressSanitizer's quarantine holds freed memory on purpose")
def test_memory_stays_flat_over_a_thousand_calls():
    """After every size has been seen once per thread, a thousand more calls (k-NN and exact KnnAttention, decode
    and prefill GroupQueryAttention, from two Python threads) add no resident memory beyond allocator noise."""
    knn = _knn_session(**KNN)
    gqa = _session(make_gqa_model(num_heads=4, kv_num_heads=2, past=True, **KNN))

    def work(start, n):
        for i in range(start, start + n):
            knn.run(None, _knn_feeds(i)) if i % 2 else gqa.run(None, _gqa_feeds(i))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda t: work(t * 1000, 60), range(2)))
        before = rss_mib()
        list(pool.map(lambda t: work(t * 1000 + 60, 500), range(2)))
        after = rss_mib()
    print(f"resident memory: {before:.1f} MiB after warm-up, {after:.1f} MiB after 1000 more calls")
    assert after - before < 16, (before, after)
