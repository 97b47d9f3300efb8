"""The k-NN path on real activations: Q, K, V of SmolLM2-135M on Brown-corpus text (2048 tokens, layers 0, 13,
24, KV head 0 and its 3 query heads), captured by `ice-capture-qk` into tools/data/smollm2_qkv_2048.npz
(shipped in the package for the demo)."""

from pathlib import Path

import iceformer.tools

import numpy as np
import onnxruntime as ort
import pytest

from iceformer.ops import contract, make_knn_attention_model, session_options
from iceformer.tools.recall import recall_at_k

DATA = Path(iceformer.tools.__file__).resolve().parent / "data" / "smollm2_qkv_2048.npz"
DEFAULTS = {a: v for a, v in contract.attribute_defaults().items() if a not in ("scale", "is_causal")}


@pytest.fixture(scope="module")
def real():
    d = np.load(DATA)
    return {k: d[k].astype(np.float32) if k in "QKV" else d[k] for k in d.files}


@pytest.mark.parametrize("layer_index", [0, 1, 2])
def test_recall_of_exact_topk_at_default_settings(real, layer_index):
    """Recall of the exact top-k keys (by q.k, causal) among the keys the default settings attend to."""
    q, k = real["Q"][layer_index, 0], real["K"][layer_index, 0]
    recall = recall_at_k(q, k, np.arange(600, q.shape[0], 13), is_causal=1)
    # Measured 0.994 / 0.982 / 0.997 (layers 0 / 13 / 24); the issue asks for >= 0.9.
    assert recall >= 0.97, (real["layers"][layer_index], recall)


def test_output_error_against_exact_at_default_settings(real):
    """All three layers through the op (k-NN forced on with min_keys=0) vs the exact path: mean relative error
    per layer below 2.5% (measured 0.38% / 0.38% / 1.8% at 2048 tokens; 4k/8k figures are in the README)."""
    knn = ort.InferenceSession(make_knn_attention_model(is_causal=1, min_keys=0).SerializeToString(),
                               session_options(2), providers=["CPUExecutionProvider"])
    exact = ort.InferenceSession(make_knn_attention_model(is_causal=1, top_k=0).SerializeToString(),
                                 session_options(2), providers=["CPUExecutionProvider"])
    first = DEFAULTS["top_k"] + DEFAULTS["local_window"] + DEFAULTS["num_sink"]
    for li in range(3):
        feeds = {"Q": real["Q"][li][None], "K": real["K"][li][None], "V": real["V"][li][None]}
        y, ref = knn.run(None, feeds)[0], exact.run(None, feeds)[0]
        err = np.linalg.norm(y - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert err[0, :, first:].mean() < 0.025, (real["layers"][li], err[0, :, first:].mean())
