"""The exact path against the float64 reference and against ONNX's own Attention (onnx.reference, ORT)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from iceformer.ops import knn_attention_reference, make_attention_model, simd_tiers
from iceformer.ops._library import _kth_largest_int
from iceformer.ops.cases import AttentionCase
from onnx.reference import ReferenceEvaluator

from tests.support.ops import BF16_PV_REL, knn_session, run_case

# Float32 kernel vs float64 reference: |error| <= ATOL + RTOL |ref| elementwise.
ATOL, RTOL = 2e-5, 1e-4

GRID = [
    AttentionCase(),  # MHA, S = T
    AttentionCase(Hq=8, Hkv=2, S=77, T=77),  # GQA
    AttentionCase(Hq=6, Hkv=1, S=50, T=300),  # MQA, S != T
    AttentionCase(S=300, T=50),  # more queries than keys
    AttentionCase(S=129, T=129, is_causal=1),
    AttentionCase(Hq=4, Hkv=2, S=40, T=333, is_causal=1),  # causal with offset (cache + new keys)
    AttentionCase(S=100, T=60, is_causal=1),  # S > T: the first 40 queries see nothing -> zeros
    AttentionCase(S=65, T=270, attn_mask="bool", mask_shape="1HST"),
    AttentionCase(B=2, S=33, T=190, attn_mask="float", mask_shape="B1ST"),
    AttentionCase(B=2, S=33, T=190, attn_mask="bias", mask_shape="ST"),
    AttentionCase(S=17, T=40, attn_mask="bool", mask_shape="T"),
    AttentionCase(B=3, S=64, T=300, key_padding_mask="bool"),
    AttentionCase(B=2, S=64, T=300, key_padding_mask="int64", is_causal=1),
    AttentionCase(B=2, S=10, T=90, key_padding_mask="int32", attn_mask="float", mask_shape="BHST"),
    AttentionCase(S=64, T=64, scale=0.37),
    AttentionCase(D=32, S=70, T=90),
    AttentionCase(D=128, S=70, T=520),
    AttentionCase(D=64, Dv=40, S=33, T=257),  # Dv != D
    AttentionCase(D=80, Dv=128, S=9, T=31),
    AttentionCase(B=3, Hq=2, Hkv=2, S=1, T=1000, is_causal=1),  # decode step
    # hard sliding window (local_window_size): keys j > i + T - S - W only
    AttentionCase(S=300, T=300, is_causal=1, attrs={"local_window_size": 37}),
    AttentionCase(
        B=2, Hq=4, Hkv=2, S=40, T=333, is_causal=1, key_padding_mask="int64", attrs={"local_window_size": 100}
    ),
    AttentionCase(S=70, T=520, attrs={"local_window_size": 300}),  # non-causal: a lower bound only
    AttentionCase(S=65, T=270, is_causal=1, attn_mask="bool", mask_shape="1HST", attrs={"local_window_size": 17}),
    AttentionCase(S=50, T=50, is_causal=1, attrs={"local_window_size": 1}),  # each query its own key only
    AttentionCase(B=2, S=1, T=1000, is_causal=1, attrs={"local_window_size": 256}),  # decode step
]


@pytest.mark.parametrize("case", GRID, ids=lambda c: c.label())
def test_exact_matches_float64_reference(case):
    inputs = case.inputs()
    got = run_case(case)
    ref = knn_attention_reference(**inputs, **case.op_attrs())
    assert got.shape == ref.shape
    assert np.all(np.abs(got - ref) <= ATOL + RTOL * np.abs(ref)), np.abs(got - ref).max()


def _onnx_attention_inputs(case, inputs):
    feeds = {"q": inputs["Q"], "k": inputs["K"], "v": inputs["V"]}
    if "attn_mask" in inputs:
        m = inputs["attn_mask"]
        if m.ndim < 2:  # ORT's Attention wants rank >= 2 and the S axis spelled out
            m = np.broadcast_to(m, (case.S, case.T)).copy()
        feeds["attn_mask"] = m
    return feeds


# ONNX's Attention has no hard window: windowed cases are checked against GroupQueryAttention (test_window_*).
ONNX_GRID = [
    c
    for c in GRID
    if c.key_padding_mask is None and (not c.is_causal or c.S == c.T) and c.S > 1 and "local_window_size" not in c.attrs
]


@pytest.mark.parametrize("case", ONNX_GRID, ids=lambda c: c.label())
def test_exact_matches_onnx_attention(case):
    """Same inputs through ONNX's standard Attention (opset 23): onnx.reference and ORT's kernel."""
    inputs = case.inputs()
    model = make_attention_model(
        "onnx",
        num_heads=case.Hq,
        kv_num_heads=case.Hkv,
        causal=bool(case.is_causal),
        scale=case.scale,
        with_mask=None if case.attn_mask is None else ("bool" if case.attn_mask == "bool" else "float"),
    )
    feeds = _onnx_attention_inputs(case, inputs)
    ours = run_case(case)
    ort_y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(ours, ort_y, atol=1e-4, rtol=1e-4)
    if case.attn_mask is None:  # onnx.reference yields NaN rows for fully masked rows; compare unmasked only
        ref_y = ReferenceEvaluator(model).run(None, feeds)[0]
        np.testing.assert_allclose(ours, ref_y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("past,new", [(200, 40), (63, 1), (500, 129)])
def test_causal_offset_matches_onnx_attention_with_past(past, new):
    """K = cached keys + new keys: ONNX aligns causality bottom-right when the cache comes via past_key."""
    from onnx import TensorProto, helper

    case = AttentionCase(Hq=4, Hkv=2, S=new, T=past + new, is_causal=1, seed=3)
    inputs = case.inputs()
    K, V = inputs["K"], inputs["V"]
    node = helper.make_node(
        "Attention",
        ["q", "k", "v", "", "past_k", "past_v"],
        ["y", "pk", "pv"],
        is_causal=1,
        q_num_heads=4,
        kv_num_heads=2,
    )
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)  # noqa: E731
    graph = helper.make_graph(
        [node], "g", [vi("q"), vi("k"), vi("v"), vi("past_k"), vi("past_v")], [vi("y"), vi("pk"), vi("pv")]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    feeds = {
        "q": inputs["Q"],
        "k": K[:, :, past:],
        "v": V[:, :, past:],
        "past_k": K[:, :, :past],
        "past_v": V[:, :, :past],
    }
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(run_case(case), expected, atol=1e-4, rtol=1e-4)


def test_rows_without_visible_keys_are_zero():
    case = AttentionCase(S=100, T=60, is_causal=1)
    y = run_case(case)
    assert np.count_nonzero(y[:, :, :40]) == 0
    assert np.all(np.abs(y[:, :, 40:]).sum(-1) > 0)


def test_several_sessions_and_registrations_in_one_process():
    cases = [AttentionCase(seed=s, S=90, T=120, is_causal=s % 2) for s in range(3)]
    sessions = [knn_session(c, threads=1 + i % 2) for i, c in enumerate(cases)]
    for _ in range(2):
        for c, s in zip(cases, sessions):
            ref = knn_attention_reference(**c.inputs(), **c.op_attrs())
            np.testing.assert_allclose(s.run(None, c.inputs())[0], ref, atol=1e-4)
    del sessions[0]
    c = cases[1]
    np.testing.assert_allclose(
        sessions[0].run(None, c.inputs())[0], knn_attention_reference(**c.inputs(), **c.op_attrs()), atol=1e-4
    )


def test_scalar_and_vector_kernels_agree(tmp_path):
    """ICEFORMER_SIMD=<tier> forces a tier (checked in subprocesses: dispatch is per process): every tier this CPU
    runs (scalar reference, hand-written AVX-512 with and without VNNI / BF16, Highway's AVX2 / AVX-512 / NEON);
    the exact path and the k-NN path (sparse block
    sets, a rank of 7 whose last 4-dimension group is padded; causal and not, T not a multiple of the 16-key panel;
    with key padding, which scans through per-row lists instead of the union kernel) agree between all variants: to
    float32 rounding, except the k-NN cases of tiers with bfloat16 P V (AVX512-BF16), within its rounding bound."""
    root = Path(__file__).resolve().parents[2]  # the child imports tests.support from the repository root (its cwd)
    code = (
        "import numpy as np\n"
        "from tests.support.ops import run_case\n"
        "from iceformer.ops.cases import AttentionCase\n"
        "from iceformer.ops import simd_variant\n"
        "from iceformer.ops._library import _simd_pv_bf16\n"
        "c = AttentionCase(Hq=4, Hkv=2, S=77, T=301, is_causal=1, D=48, Dv=24)\n"
        "k = AttentionCase(Hq=2, Hkv=1, S=128, T=2048, is_causal=1, D=48, Dv=24,\n"
        "                  attrs=dict(top_k=8, max_candidates=8, local_window=8, num_sink=2, min_keys=0, rank=7,\n"
        "                             tail_samples=32, tail_limit=1.0))\n"
        "ks = [k, k.with_(is_causal=0, S=70, T=1999), k.with_(B=2, is_causal=0, S=70, T=1999, key_padding_mask='bool')]\n"
        "np.save(%r, np.concatenate([run_case(x).ravel() for x in [c, *ks]]))\n"
        "print(simd_variant(), int(_simd_pv_bf16()), max(float(np.abs(x.inputs()['V']).max()) for x in ks))\n"
    )
    outs = {}
    for variant in [*simd_tiers(), "auto"]:
        path = tmp_path / f"{variant}.npy"
        env = dict(os.environ, ICEFORMER_SIMD=variant)
        res = subprocess.run(
            [sys.executable, "-c", code % str(path)], env=env, capture_output=True, text=True, cwd=root
        )
        assert res.returncode == 0, res.stderr
        outs[variant] = (np.load(path), res.stdout.strip())
    for variant in simd_tiers():
        assert outs[variant][1].split()[0] == variant
    assert outs["scalar"][1].split()[1] == "0"  # the reference runs P V in fp32
    n_exact = 4 * 77 * 24  # the first case's outputs; the k-NN cases follow
    for variant in outs:
        ref, got = outs["scalar"][0], outs[variant][0]
        _, bf16, vmax = outs[variant][1].split()
        np.testing.assert_allclose(ref[:n_exact], got[:n_exact], atol=1e-5, rtol=1e-5)
        if bf16 == "1":
            # P and V rounded to bfloat16: within BF16_PV_REL of the weighted mean of |v|, so of max |v|.
            assert np.abs(ref[n_exact:] - got[n_exact:]).max() <= BF16_PV_REL * float(vmax), variant
        else:
            np.testing.assert_allclose(ref[n_exact:], got[n_exact:], atol=1e-5, rtol=1e-5)


def test_threshold_selection_kernel_matches_sorting_in_every_variant(tmp_path):
    """kth_largest_int (the per-row thresholds of the low-rank scan) against numpy's sort, per kernel variant:
    sizes around the 16-lane vectors and the 768-key sample, k from 1 to n (the two-level path for small k, the
    plain bisection for large k), many ties, negative values, the ends of the kernel's integer range."""
    code = (
        "import json, numpy as np\n"
        "from iceformer.ops._library import _kth_largest_int\n"
        "rng = np.random.default_rng(5)\n"
        "bad = checks = 0\n"
        "for n in (1, 5, 16, 17, 31, 64, 200, 768, 784, 1000):\n"
        "    for lo, hi in ((0, 4), (-3, 0), (-2**20, 2**20), (-2**24 + 1, 2**24 - 1), (7, 8)):\n"
        "        v = rng.integers(lo, hi, n).astype(np.float32)\n"
        "        for k in sorted({1, 2, 15, 16, 17, 29, 64, n // 2 or 1, n - 1 or 1, n}):\n"
        "            if k > n: continue\n"
        "            checks += 1\n"
        "            bad += _kth_largest_int(v, k) != np.sort(v)[::-1][k - 1]\n"
        "print(json.dumps([checks, int(bad)]))\n"
    )
    for variant in simd_tiers():
        res = subprocess.run(
            [sys.executable, "-c", code], env=dict(os.environ, ICEFORMER_SIMD=variant), capture_output=True, text=True
        )
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == [365, 0], variant


def test_bfloat16_pv_kernel_matches_a_float64_reference_in_every_variant(tmp_path):
    """pv_tile_bf16 (the k-NN path's P V): P and V rounded to bfloat16 (nearest, ties to even: the values at the
    rounding ties below are checked exactly), products summed in float32. Against float64 of the rounded inputs:
    within 4 float32 roundings per column sum; rows 1..19 (row groups of 8 and remainders), odd and even cols,
    dv across the 16-lane tail, an accumulating output, and inf / NaN carried like the float32 kernel."""
    code = (
        "import json, numpy as np\n"
        "from iceformer.ops._library import _pv_tile_bf16\n"
        "def bf16(x):\n"
        "    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)\n"
        "    r = ((b + 0x7fff + ((b >> 16) & 1)) >> 16) << 16\n"
        "    return r.astype(np.uint32).view(np.float32)\n"
        "rng = np.random.default_rng(3)\n"
        "worst = 0.0\n"
        "for rows, cols, dv in ((1, 2, 1), (3, 5, 17), (8, 256, 64), (9, 300, 48), (19, 33, 80), (7, 513, 16)):\n"
        "    p = rng.random((rows, cols)).astype(np.float32)\n"
        "    v = rng.standard_normal((cols, dv)).astype(np.float32)\n"
        "    o0 = rng.standard_normal((rows, dv)).astype(np.float32)\n"
        "    ref = o0.astype(np.float64) + bf16(p).astype(np.float64) @ bf16(v).astype(np.float64)\n"
        "    got = _pv_tile_bf16(p, v, o0)\n"
        "    scale = np.abs(bf16(p)).astype(np.float64) @ np.abs(bf16(v)).astype(np.float64) + np.abs(o0)\n"
        "    worst = max(worst, float(np.max(np.abs(got - ref) / (scale * 2.0**-24 * 4 * (cols + 1)))))\n"
        "# ties: 1 + 2^-8 lies halfway between two bfloat16 values and rounds to the even one (1.0); 1 + 3 * 2^-8 up\n"
        "tie = _pv_tile_bf16(np.array([[1.0, 0.0]], np.float32), np.array([[1 + 2.0**-8], [0.0]], np.float32))[0, 0]\n"
        "up = _pv_tile_bf16(np.array([[1.0, 0.0]], np.float32), np.array([[1 + 3 * 2.0**-8], [0.0]], np.float32))[0, 0]\n"
        "special = _pv_tile_bf16(np.array([[1.0, 1.0]], np.float32), np.array([[np.inf, np.nan], [1.0, 1.0]], np.float32))[0]\n"
        "print(json.dumps([worst, float(tie), float(up), [str(x) for x in special]]))\n"
    )
    for variant in simd_tiers():
        res = subprocess.run(
            [sys.executable, "-c", code], env=dict(os.environ, ICEFORMER_SIMD=variant), capture_output=True, text=True
        )
        assert res.returncode == 0, res.stderr
        worst, tie, up, special = json.loads(res.stdout)
        assert worst <= 1.0, (variant, worst)
        assert tie == 1.0 and up == 1 + 2.0**-6, (variant, tie, up)
        assert special == ["inf", "nan"], variant


def test_threshold_selection_kernel_refuses_values_outside_its_contract():
    with pytest.raises(ValueError, match="k must be in"):
        _kth_largest_int([1.0, 2.0], 0)  # k = 0
    with pytest.raises(ValueError, match="k must be in"):
        _kth_largest_int([1.0, 2.0], 3)  # k > n
    with pytest.raises(ValueError, match="integers"):
        _kth_largest_int([1.5, 2.0], 1)  # not an integer
    with pytest.raises(ValueError, match="integers"):
        _kth_largest_int([2.0**24, 2.0], 1)  # outside (-2^24, 2^24)


def test_exporter_style_causal_mask_matches_is_causal():
    case = AttentionCase(S=200, T=200, seed=9)
    feeds = case.inputs()
    mask = np.where(np.tril(np.ones((200, 200), bool)), 0.0, np.finfo(np.float32).min).astype(np.float32)
    y_mask = knn_session(case.with_(attn_mask="float")).run(None, {**feeds, "attn_mask": mask})[0]
    y_causal = run_case(case.with_(is_causal=1))
    np.testing.assert_allclose(y_mask, y_causal, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("window", [1, 2, 5, 64, 299, 300, 1000])
@pytest.mark.parametrize("hq,hkv", [(2, 1), (4, 4)])
def test_window_matches_group_query_attention(window, hq, hkv):
    """local_window_size means what it means in com.microsoft.GroupQueryAttention (causal prefill, ORT's kernel)."""
    from onnx import TensorProto, helper

    case = AttentionCase(Hq=hq, Hkv=hkv, S=300, T=300, D=32, is_causal=1, seed=5, attrs={"local_window_size": window})
    inputs = case.inputs()
    flat = lambda x: x.transpose(0, 2, 1, 3).reshape(1, x.shape[2], -1)  # noqa: E731  [B,H,S,D] -> [B,S,H*D]
    node = helper.make_node(
        "GroupQueryAttention",
        ["q", "k", "v", "", "", "seqlens_k", "total_sequence_length"],
        ["y", "pk", "pv"],
        domain="com.microsoft",
        num_heads=hq,
        kv_num_heads=hkv,
        local_window_size=window,
    )
    vi = lambda n, t=TensorProto.FLOAT: helper.make_tensor_value_info(n, t, None)  # noqa: E731
    graph = helper.make_graph(
        [node],
        "gqa",
        [vi("q"), vi("k"), vi("v"), vi("seqlens_k", TensorProto.INT32), vi("total_sequence_length", TensorProto.INT32)],
        [vi("y"), vi("pk"), vi("pv")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    gqa = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None,
        {
            "q": flat(inputs["Q"]),
            "k": flat(inputs["K"]),
            "v": flat(inputs["V"]),
            "seqlens_k": np.array([case.T - 1], np.int32),
            "total_sequence_length": np.array([case.T], np.int32),
        },
    )[0]
    np.testing.assert_allclose(flat(run_case(case)), gqa, atol=1e-5, rtol=1e-4)
    ref = knn_attention_reference(**inputs, **case.op_attrs())
    np.testing.assert_allclose(flat(ref), gqa, atol=1e-5, rtol=1e-4)
