"""iceformer.GroupQueryAttention against ORT's com.microsoft.GroupQueryAttention on the same inputs: outputs and
presents within 1e-5 (k-NN off), separate and shared (IOBinding) KV buffers, genai-style generation, refusals."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from iceformer.ops import contract, make_gqa_model, session_options

ATOL, RTOL = 1e-5, 1e-4
DATA = Path(__file__).resolve().parents[2] / "tools" / "data" / "smollm2_qkv_2048.npz"


def _sessions(**model_kw):
    ours = make_gqa_model(**model_kw)
    theirs = make_gqa_model(
        domain="com.microsoft",
        **{k: v for k, v in model_kw.items() if k not in [a.name for a in contract.KNN_ATTRIBUTES]},
    )
    return (
        ort.InferenceSession(ours.SerializeToString(), session_options(2), providers=["CPUExecutionProvider"]),
        ort.InferenceSession(theirs.SerializeToString(), providers=["CPUExecutionProvider"]),
    )


def _feeds(rng, B, S, P, Hq, Hkv, D, packed, rotary, lens, rows=None):
    f = np.float32
    feeds = {}
    if packed:
        feeds["query"] = rng.standard_normal((B, S, (Hq + 2 * Hkv) * D)).astype(f)
    else:
        feeds["query"] = rng.standard_normal((B, S, Hq * D)).astype(f)
        feeds["key"] = rng.standard_normal((B, S, Hkv * D)).astype(f)
        feeds["value"] = rng.standard_normal((B, S, Hkv * D)).astype(f)
    if P:
        feeds["past_key"] = rng.standard_normal((B, Hkv, P, D)).astype(f)
        feeds["past_value"] = rng.standard_normal((B, Hkv, P, D)).astype(f)
    feeds["seqlens_k"] = np.asarray(lens, np.int32) - 1
    feeds["total_sequence_length"] = np.array([max(lens)], np.int32)
    if rotary:
        angles = rng.random((rows or (max(lens) + 8), D // 4)).astype(f) * 3  # rotary over half the head dims
        feeds["cos_cache"], feeds["sin_cache"] = np.cos(angles), np.sin(angles)
    return feeds


GRID = [  # (B, S, P, lens or None = all P + S, model attributes)
    (1, 40, 0, None, {}),  # prefill
    (1, 40, 0, None, {"packed": True}),
    (1, 70, 0, None, {"rotary": True}),
    (1, 70, 0, None, {"rotary": True, "rotary_interleaved": 1}),
    (2, 64, 0, [64, 37], {"rotary": True}),  # first prompt, right padding
    (1, 90, 0, None, {"local_window_size": 17}),
    (1, 50, 0, None, {"softcap": 2.0}),
    (1, 64, 0, None, {"scale": 0.3}),
    (1, 48, 200, None, {"rotary": True}),  # chunked prefill after a cached prefix
    (1, 1, 300, None, {}),  # decode
    (1, 1, 700, None, {"packed": True, "rotary": True, "local_window_size": 64}),
    (1, 4, 1100, None, {"softcap": 1.5}),  # speculative step across decode chunks
    (2, 1, 600, [601, 601], {"rotary": True}),
    (1, 1, 300, None, {"causal": 0}),  # bidirectional
]


@pytest.mark.parametrize("B,S,P,lens,attrs", GRID, ids=[f"B{g[0]}-S{g[1]}-P{g[2]}-{g[4]}" for g in GRID])
@pytest.mark.parametrize("heads", [(4, 2), (3, 3)], ids=["gqa4/2", "mha3"])
def test_matches_ort_group_query_attention(B, S, P, lens, attrs, heads):
    Hq, Hkv = heads
    D = 32
    model_kw = {"num_heads": Hq, "kv_num_heads": Hkv, "past": P > 0, **attrs}
    packed, rotary = model_kw.get("packed", False), model_kw.get("rotary", False)
    lens = lens or [P + S] * B
    feeds = _feeds(np.random.default_rng(B * 1000 + S + P), B, S, P, Hq, Hkv, D, packed, rotary, lens)
    ours, theirs = _sessions(**model_kw)
    got, want = ours.run(None, feeds), theirs.run(None, feeds)
    valid = np.arange(S)[None, :] < (np.asarray(lens) - P)[:, None]  # padding rows of a first prompt: unspecified
    np.testing.assert_allclose(got[0][valid], want[0][valid], atol=ATOL, rtol=RTOL)
    for b in range(B):  # presents: the valid rows
        for g, w in zip(got[1:], want[1:]):
            np.testing.assert_allclose(g[b, :, : lens[b]], w[b, :, : lens[b]], atol=ATOL, rtol=RTOL)


def _bound_run(sess, feeds, kv):
    """One run with past and present bound to the same buffers (genai's past_present_share_buffer)."""
    io = sess.io_binding()
    for name, value in feeds.items():
        io.bind_cpu_input(name, value)
    io.bind_ortvalue_input("past_key", kv[0])
    io.bind_ortvalue_input("past_value", kv[1])
    io.bind_output("output")
    io.bind_ortvalue_output("present_key", kv[0])
    io.bind_ortvalue_output("present_value", kv[1])
    sess.run_with_iobinding(io)
    return io.copy_outputs_to_cpu()[0]


@pytest.mark.parametrize("packed", [False, True], ids=["separate", "packed"])
def test_generation_with_a_shared_kv_buffer(packed):
    """As genai drives it: one buffer of max_length rows per layer bound as past and present; a right-padded
    first prompt of two rows with different lengths, then decode steps; ours and ORT's in lockstep give the same
    outputs and the same buffer contents (valid rows)."""
    rng = np.random.default_rng(11)
    B, Hq, Hkv, D, max_len = 2, 4, 2, 32, 160
    ours, theirs = _sessions(num_heads=Hq, kv_num_heads=Hkv, past=True, rotary=True, packed=packed)
    bufs = {
        name: [ort.OrtValue.ortvalue_from_numpy(np.zeros((B, Hkv, max_len, D), np.float32)) for _ in range(2)]
        for name in ("ours", "theirs")
    }
    lens = np.array([70, 45])
    angles = rng.random((max_len, D // 4)).astype(np.float32) * 3
    rot = {"cos_cache": np.cos(angles), "sin_cache": np.sin(angles)}
    S = int(lens.max())
    for step in range(4):
        feeds = _feeds(rng, B, S, 0, Hq, Hkv, D, packed, False, list(lens))
        feeds.update(rot)
        got = _bound_run(ours, feeds, bufs["ours"])
        want = _bound_run(theirs, feeds, bufs["theirs"])
        rows = np.arange(S)[None, :] < (lens if step == 0 else np.full(B, S))[:, None]
        np.testing.assert_allclose(got[rows], want[rows], atol=ATOL, rtol=RTOL)
        for a, b in zip(bufs["ours"], bufs["theirs"]):
            for r in range(B):
                np.testing.assert_allclose(a.numpy()[r, :, : lens[r]], b.numpy()[r, :, : lens[r]], atol=ATOL, rtol=RTOL)
        S = 1
        lens = lens + 1


def test_knn_prefill_on_real_activations(tmp_path, monkeypatch):
    """SmolLM2 layer activations (post-rotary Q/K, 3 query heads on 1 KV head), 2048 tokens, k-NN forced: the k-NN
    path runs and stays within a few percent of ORT's exact answer."""
    stats = tmp_path / "stats.jsonl"
    monkeypatch.setenv("ICEFORMER_STATS", str(stats))
    d = np.load(DATA)
    layer = 1
    q, k, v = (d[n][layer] for n in ("Q", "K", "V"))  # [H, T, D]
    Hq, Hkv, T = q.shape[0], k.shape[0], q.shape[1]
    flat = lambda x: np.ascontiguousarray(x.transpose(1, 0, 2).reshape(1, T, -1), dtype=np.float32)  # noqa: E731
    feeds = {
        "query": flat(q),
        "key": flat(k),
        "value": flat(v),
        "seqlens_k": np.array([T - 1], np.int32),
        "total_sequence_length": np.array([T], np.int32),
    }
    ours, theirs = _sessions(num_heads=Hq, kv_num_heads=Hkv, past=False, min_keys=0)
    got, want = ours.run(None, feeds)[0], theirs.run(None, feeds)[0]
    assert json.loads(stats.read_text().splitlines()[-1])["path"] == "knn"
    rows = slice(256, None)  # rows that see enough keys for the k-NN path
    err = np.linalg.norm(got[0, rows] - want[0, rows], axis=-1) / np.linalg.norm(want[0, rows], axis=-1)
    assert np.mean(err) < 0.05, np.mean(err)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"smooth_softmax": 1}, "smooth_softmax = 1 is not supported"),
        ({"qk_output": 1}, "qk_output is not supported"),
        ({"sliding_window_cache": 1}, "sliding_window_cache = 1"),
        ({"local_window_size": 0}, "local_window_size = 0 is invalid"),
        ({"causal": 0, "local_window_size": 8}, "local_window_size needs causal = 1"),
        ({"kv_num_heads": 3}, "must be a positive multiple of kv_num_heads = 3"),
        ({"top_k": -1}, "top_k=-1 is invalid"),
    ],
)
def test_unsupported_settings_are_refused_at_session_creation(change, message):
    model = make_gqa_model(num_heads=4, kv_num_heads=2)
    node = model.graph.node[0]
    for name, value in change.items():
        for a in list(node.attribute):
            if a.name == name:
                node.attribute.remove(a)
        node.attribute.append(__import__("onnx").helper.make_attribute(name, value))
    with pytest.raises(Exception, match=message):
        ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("extra", ["position_ids", "attention_bias", "head_sink"])
def test_refused_inputs_are_named(extra):
    from onnx import TensorProto, helper

    model = make_gqa_model(num_heads=4, kv_num_heads=2, past=True, rotary=True)
    node = model.graph.node[0]
    index = 9 + contract.GQA_REFUSED_INPUTS.index(extra)
    while len(node.input) < index:
        node.input.append("")
    node.input.append(extra)
    model.graph.input.append(helper.make_tensor_value_info(extra, TensorProto.FLOAT, None))
    with pytest.raises(Exception, match=f"input {extra} is not supported"):
        ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    "what,feeds_change,message",
    [
        ("query rank", {"query": np.zeros((2, 64), np.float32)}, "query must be"),
        ("head split", {"query": np.zeros((1, 5, 130), np.float32)}, "positive multiple of 4"),
        ("seqlens beyond buffer", {"seqlens_k": np.array([500], np.int32)}, "seqlens_k \\+ 1 = 501"),
        ("seqlens dtype", {"seqlens_k": np.array([4.0], np.float32)}, "data type"),
    ],
)
def test_bad_inputs_are_ort_errors(what, feeds_change, message):
    model = make_gqa_model(num_heads=4, kv_num_heads=2, past=False)
    sess = ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {
        "query": rng.standard_normal((1, 5, 128)).astype(np.float32),
        "key": rng.standard_normal((1, 5, 64)).astype(np.float32),
        "value": rng.standard_normal((1, 5, 64)).astype(np.float32),
        "seqlens_k": np.array([4], np.int32),
        "total_sequence_length": np.array([5], np.int32),
    }
    feeds.update(feeds_change)
    with pytest.raises(Exception, match=message):
        sess.run(None, feeds)


@pytest.mark.parametrize("B,S,P", [(0, 5, 4), (1, 0, 3), (2, 1, 0)], ids=["batch 0", "no new tokens", "no past rows"])
def test_empty_shapes(B, S, P):
    """Empty batches and steps give empty outputs (and the presents), never a crash."""
    model = make_gqa_model(num_heads=4, kv_num_heads=2, past=True)
    sess = ort.InferenceSession(model.SerializeToString(), session_options(2), providers=["CPUExecutionProvider"])
    total = max(P + S, 1)
    feeds = {
        "query": np.zeros((B, S, 128), np.float32),
        "key": np.zeros((B, S, 64), np.float32),
        "value": np.zeros((B, S, 64), np.float32),
        "past_key": np.ones((B, 2, P, 32), np.float32),
        "past_value": np.ones((B, 2, P, 32), np.float32),
        "seqlens_k": np.full(B, total - 1, np.int32),
        "total_sequence_length": np.array([total], np.int32),
    }
    out, pk, _ = sess.run(None, feeds)
    assert out.shape == (B, S, 128) and pk.shape == (B, 2, max(total, P), 32)
    assert np.all(pk[:, :, :P] == 1)
