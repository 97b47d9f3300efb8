"""Streaming heads found by a prompt's probe (attributes auto_window, auto_window_error; ops/csrc/auto_windows.h), on
real activations: SmolLM2-135M's shipped capture (2048 Brown tokens, layers 0 / 13 / 24, KV head 0 and its 3 query
heads). The op streams exactly the heads whose float64 probe error (iceformer.ops.probe_errors_reference) is within
the tolerance, and then runs as head_windows would make it, bit for bit."""

import json
from pathlib import Path

import iceformer.tools
import numpy as np
import onnxruntime as ort
import pytest
from iceformer.ops import make_gqa_model, probe_errors_reference, session_options

from tests.support.ops import knn_session

DATA = Path(iceformer.tools.__file__).resolve().parent / "data" / "smollm2_qkv_2048.npz"
# k-NN from the first rows (min_keys 0) and a 512-key window: the 2048-token capture then has probe rows.
AUTO = dict(is_causal=1, min_keys=0, auto_window=512, auto_window_error=0.01)
# Measured (float64 probe errors, %): layer 13 [4.28, 0.57, 0.72], layers 0 and 24 every head >= 11%.
LOCAL_LAYER, DIFFUSE_LAYER = 1, 0


@pytest.fixture(scope="module")
def real():
    d = np.load(DATA)
    return {k: d[k].astype(np.float32) if k in "QKV" else d[k] for k in d.files}


def _feeds(real, layer: int) -> dict:
    return {x: real[x][layer][None] for x in "QKV"}


def _run(feeds: dict, threads: int = 2, **attrs) -> np.ndarray:
    return knn_session(None, threads, **{**AUTO, **attrs}).run(None, feeds)[0]


def _last_stats(path: Path) -> dict:
    return json.loads(path.read_text().splitlines()[-1])


def test_the_probe_streams_the_heads_the_reference_finds(real, tmp_stats):
    feeds = _feeds(real, LOCAL_LAYER)
    err = probe_errors_reference(feeds["Q"], feeds["K"], feeds["V"], **AUTO)
    # Every head at least 25% away from the tolerance, so that float32 against float64 cannot flip a decision.
    assert np.all(np.abs(err - 0.01) > 0.25 * 0.01), err
    want = [512 if e <= 0.01 else 0 for e in err]
    assert want == [0, 512, 512]
    got = _run(feeds)
    assert _last_stats(tmp_stats)["stream_heads"] == 2
    np.testing.assert_array_equal(got, _run(feeds, auto_window=0, head_windows=want))
    np.testing.assert_array_equal(got, _run(feeds, threads=1))
    assert np.abs(got - _run(feeds, auto_window=0)).max() > 1e-4  # the streaming heads changed the output


def test_no_head_streams_where_every_probe_error_is_above_the_tolerance(real, tmp_stats):
    feeds = _feeds(real, DIFFUSE_LAYER)
    err = probe_errors_reference(feeds["Q"], feeds["K"], feeds["V"], **AUTO)
    assert np.all(err > 0.1), err
    got = _run(feeds)
    assert _last_stats(tmp_stats)["stream_heads"] == 0
    np.testing.assert_array_equal(got, _run(feeds, auto_window=0))


@pytest.mark.parametrize(
    "attrs, why",
    [
        ({"auto_window": 0}, "the probe is off"),
        ({"auto_window_error": 0.0}, "no head is exactly local"),
        ({"head_windows": [0, 0, 0]}, "the node's own lists decide"),
        ({"auto_window": 4096}, "no row sees more than num_sink + auto_window keys"),
    ],
)
def test_no_probe_or_no_streaming(real, tmp_stats, attrs, why):
    feeds = _feeds(real, LOCAL_LAYER)
    got = _run(feeds, **attrs)
    assert _last_stats(tmp_stats)["stream_heads"] == 0, why
    np.testing.assert_array_equal(got, _run(feeds, **{**attrs, "auto_window": 0}))


def test_masks_skip_the_probe(real, tmp_stats):
    """attn_mask or a key_padding_mask that is not a length (here: one padded key at position 10): the probe does not
    run (its rows would need the masks)."""
    padding = np.ones((1, 2048), bool)
    padding[0, 10] = False
    feeds = {**_feeds(real, LOCAL_LAYER), "key_padding_mask": padding}
    sess = knn_session(None, 2, key_padding_mask="bool", **AUTO)
    got = sess.run(None, feeds)[0]
    assert _last_stats(tmp_stats)["stream_heads"] == 0
    want = knn_session(None, 2, key_padding_mask="bool", **{**AUTO, "auto_window": 0}).run(None, feeds)[0]
    np.testing.assert_array_equal(got, want)


def test_group_query_attention_prompts_probe_too(real, tmp_stats):
    """The genai path: a GroupQueryAttention prompt (no past) on the same activations streams the same heads."""
    feeds = _feeds(real, LOCAL_LAYER)
    S, D = 2048, 64
    model = make_gqa_model(num_heads=3, kv_num_heads=1, **{k: v for k, v in AUTO.items() if k != "is_causal"})
    sess = ort.InferenceSession(model.SerializeToString(), session_options(2), providers=["CPUExecutionProvider"])
    gqa = {
        "query": feeds["Q"][0].transpose(1, 0, 2).reshape(1, S, 3 * D),
        "key": feeds["K"][0].transpose(1, 0, 2).reshape(1, S, D),
        "value": feeds["V"][0].transpose(1, 0, 2).reshape(1, S, D),
        "past_key": np.zeros((1, 1, 0, D), np.float32),
        "past_value": np.zeros((1, 1, 0, D), np.float32),
        "seqlens_k": np.array([S - 1], np.int32),
        "total_sequence_length": np.array([S], np.int32),
    }
    names = {i.name for i in sess.get_inputs()}
    out = sess.run(None, {k: v for k, v in gqa.items() if k in names})[0]
    assert _last_stats(tmp_stats)["stream_heads"] == 2
    knn = _run(feeds).transpose(0, 2, 1, 3).reshape(1, S, 3 * D)
    np.testing.assert_allclose(out, knn, rtol=0, atol=1e-6)
