"""Bad input gives an ONNX Runtime error naming the problem, or a defined result; never a crash."""

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from iceformer.ops import _library, knn_attention_reference
from iceformer.ops.cases import AttentionCase

from tests.support.ops import knn_session


def f32(*shape):
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def run(feeds, **kw):
    return knn_session(unknown_shapes=True, **kw).run(None, feeds)


@pytest.mark.parametrize(
    "shapes,message",
    [
        (((1, 2, 8, 16), (1, 2, 8), (1, 2, 8, 16)), r"input K must have rank 4 \[B,Hkv,T,D\], got rank 3"),
        (((2, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)), r"input Q must have rank 4"),
        (((1, 2, 8, 16), (2, 2, 8, 16), (2, 2, 8, 16)), r"batch mismatch: Q.B=1 but K.B=2"),
        (((1, 2, 8, 16), (1, 2, 8, 16), (1, 1, 8, 16)), r"KV head count mismatch: K.Hkv=2 but V.Hkv=1"),
        (((1, 2, 8, 16), (1, 2, 8, 16), (1, 2, 9, 16)), r"key count mismatch: K.T=8 but V.T=9"),
        (((1, 2, 8, 16), (1, 2, 8, 32), (1, 2, 8, 16)), r"head dim mismatch: Q.D=16 but K.D=32"),
        (((1, 3, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)), r"Hq must be a multiple of Hkv.*Q.Hq=3 but K.Hkv=2"),
        (((1, 2, 8, 16), (1, 0, 8, 16), (1, 0, 8, 16)), r"at least one head"),
        (((1, 2, 8, 0), (1, 2, 8, 0), (1, 2, 8, 4)), r"head dim D must be >= 1"),
    ],
)
def test_shape_errors(shapes, message):
    q, k, v = (f32(*s) for s in shapes)
    with pytest.raises(Exception, match=message):
        run({"Q": q, "K": k, "V": v})


def test_mask_that_does_not_broadcast():
    feeds = {
        "Q": f32(1, 2, 8, 16),
        "K": f32(1, 2, 12, 16),
        "V": f32(1, 2, 12, 16),
        "attn_mask": np.ones((1, 3, 8, 12), bool),
    }
    with pytest.raises(
        Exception, match=r"attn_mask shape \[1,3,8,12\] does not broadcast.*axis Hq is 3, expected 1 or 2"
    ):
        run(feeds, attn_mask="bool")


def test_mask_of_rank_five():
    feeds = {
        "Q": f32(1, 2, 8, 16),
        "K": f32(1, 2, 12, 16),
        "V": f32(1, 2, 12, 16),
        "attn_mask": np.ones((1, 1, 1, 8, 12), bool),
    }
    with pytest.raises(Exception, match=r"attn_mask must have rank 1..4"):
        run(feeds, attn_mask="bool")


def test_mask_of_wrong_dtype():
    feeds = {
        "Q": f32(1, 2, 8, 16),
        "K": f32(1, 2, 12, 16),
        "V": f32(1, 2, 12, 16),
        "attn_mask": np.ones((8, 12), np.int64),
    }
    with pytest.raises(Exception, match=r"attn_mask must be bool or float32"):
        run(feeds, attn_mask="int64")


def test_key_padding_mask_of_wrong_shape_and_dtype():
    base = {"Q": f32(2, 2, 8, 16), "K": f32(2, 2, 12, 16), "V": f32(2, 2, 12, 16)}
    with pytest.raises(Exception, match=r"key_padding_mask must have shape \[B,T\]=\[2,12\], got \[2,11\]"):
        run({**base, "key_padding_mask": np.ones((2, 11), bool)}, key_padding_mask="bool")
    with pytest.raises(Exception, match=r"key_padding_mask must be bool, int32 or int64"):
        run({**base, "key_padding_mask": np.ones((2, 12), np.float32)}, key_padding_mask="float")


# Attributes out of range or of the wrong type: tests/ops/test_contract.py, one case per contract attribute.


@pytest.mark.parametrize("S,T", [(0, 10), (10, 0), (0, 0)])
def test_empty_sequences_give_defined_results(S, T):
    feeds = {"Q": f32(1, 2, S, 16), "K": f32(1, 2, T, 16), "V": f32(1, 2, T, 8)}
    (y,) = run(feeds, is_causal=1)
    assert y.shape == (1, 2, S, 8)
    assert np.count_nonzero(y) == 0


def test_nan_and_inf_propagate_only_where_visible():
    """A NaN key poisons exactly the queries that may see it (causal), an inf query its own row."""
    case = AttentionCase(S=200, T=200, is_causal=1, seed=5)
    feeds = case.inputs()
    feeds["K"][0, 1, 120, 3] = np.nan
    feeds["Q"][0, 2, 10, 0] = np.inf
    (y,) = knn_session(case).run(None, feeds)
    bad = ~np.isfinite(y).all(-1)
    expected = np.zeros_like(bad)
    expected[0, 1, 120:] = True
    expected[0, 2, 10] = True
    assert np.array_equal(bad, expected)
    ok = ~expected
    ref = knn_attention_reference(**case.inputs(), **case.op_attrs())
    np.testing.assert_allclose(y[ok], ref[ok], atol=1e-4)


@pytest.mark.parametrize(
    "attrs",
    [{"top_k": 0}, {"min_keys": 0}, {"min_keys": 0, "top_k": 16, "max_candidates": 16, "tail_samples": 0}],
    ids=["exact", "k-NN forced", "k-NN sparse"],
)
def test_a_non_finite_value_reaches_only_rows_that_see_its_key(attrs):
    """A NaN / inf in V: rows that may not see its key stay finite, although the tile kernels multiply every column of
    a block (weight exactly 0 for a hidden key, and 0 x inf is NaN); the key's own row, which always sees it, does not.
    Exact: every later row sees it. (Previously rows 128-149 and 160-169, the keys' query blocks, were NaN too.)"""
    feeds = {"Q": f32(1, 2, 300, 32), "K": f32(1, 1, 300, 32), "V": f32(1, 1, 300, 16)}
    feeds["V"][0, 0, 150, 2] = np.nan
    feeds["V"][0, 0, 170, 0] = np.inf
    (y,) = run(feeds, is_causal=1, **attrs)
    bad = ~np.isfinite(y).all(-1)  # [1, 2, 300]
    assert not bad[0, :, :150].any()
    assert bad[0, :, 150].all() and bad[0, :, 170].all()
    if attrs == {"top_k": 0}:
        assert bad[0, :, 150:].all()


# A child process whose address space is capped 256 MiB above what it holds after a warm-up call: a call that
# needs more scratch than that must fail with an error naming what it wanted and the call's sizes.
_OOM_CHILD = textwrap.dedent("""
    import resource, sys
    import numpy as np, onnxruntime as ort
    from iceformer.ops import make_knn_attention_model, session_options
    attrs, T, D = eval(sys.argv[1])
    sess = ort.InferenceSession(make_knn_attention_model(**attrs).SerializeToString(), session_options(2))
    f = lambda *s: np.random.default_rng(0).standard_normal(s, dtype=np.float32)
    sess.run(None, {"Q": f(1, 1, 64, D), "K": f(1, 1, 128, D), "V": f(1, 1, 128, 1)})
    feeds = {"Q": f(1, 1, 64, D), "K": f(1, 1, T, D), "V": f(1, 1, T, 1)}
    vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
    try:
        sess.run(None, feeds)
        print("ran")
    except Exception as e:
        print(type(e).__name__, e)
""")


@pytest.mark.skipif(_library.sanitized(), reason="AddressSanitizer reserves terabytes of address space")
@pytest.mark.parametrize(
    "attrs,T,D,message",
    [
        (
            {"top_k": 0},
            2_000_000,
            64,
            r"out of memory for the packed keys \(512000000 bytes requested; B=1 Hq=1 Hkv=1 S=64 T=2000000 D=64 Dv=1\)",
        ),
        (
            {"top_k": 8, "search": 1, "L": 64, "m": 64, "min_keys": 0},
            100_000,
            4,
            r"out of memory for the k-NN index \(3279200264 bytes requested; B=1 Hq=1 Hkv=1 S=64 T=100000 D=4 Dv=1\)",
        ),
    ],
    ids=["exact path: 512 MB of packed keys", "DCI: 4096 lists over 100k keys"],
)
def test_a_call_beyond_the_memory_limit_fails_naming_the_sizes(attrs, T, D, message):
    res = subprocess.run([sys.executable, "-c", _OOM_CHILD, repr((attrs, T, D))], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]  # no abort: the error reached Python
    assert res.stdout.startswith("RuntimeException"), res.stdout  # ORT's RUNTIME_EXCEPTION, not INVALID_ARGUMENT
    assert re.search(message, res.stdout), res.stdout


def test_the_no_mask_placeholder_is_no_mask_and_nothing_else_is():
    """contract.NO_MASK_VALUE as a one-element float attn_mask is no mask (what the rewriter passes); a one-element
    mask of another value is a real mask broadcast everywhere (-inf: every key masked, so zeros)."""
    from iceformer.ops import contract

    rng = np.random.default_rng(12)
    q, k, v = (rng.standard_normal((1, 2, 6, 8)).astype(np.float32) for _ in range(3))
    plain = knn_session(top_k=0).run(None, {"Q": q, "K": k, "V": v})[0]
    session = knn_session(attn_mask="float", top_k=0)
    placeholder = np.full([1], contract.NO_MASK_VALUE, np.float32)
    np.testing.assert_array_equal(session.run(None, {"Q": q, "K": k, "V": v, "attn_mask": placeholder})[0], plain)
    masked = session.run(None, {"Q": q, "K": k, "V": v, "attn_mask": np.full([1], -np.inf, np.float32)})[0]
    np.testing.assert_array_equal(masked, np.zeros_like(plain))
