"""The k-NN path on real activations: Q, K, V of SmolLM2-135M on Brown-corpus text (2048 tokens, layers 0, 13,
24, KV head 0 and its 3 query heads), captured by `ice-capture-qk` into tools/data/smollm2_qkv_2048.npz
(shipped in the package; ice-eval-knn runs on it by default)."""

import json
from pathlib import Path

import iceformer.tools
import numpy as np
import onnxruntime as ort
import pytest
from iceformer.ops import contract, make_knn_attention_model, session_options

from iceformer.metrics import recall_at_k

DATA = Path(iceformer.tools.__file__).resolve().parent / "data" / "smollm2_qkv_2048.npz"
DEFAULTS = {a: v for a, v in contract.attribute_defaults().items() if a not in ("scale", "is_causal")}


@pytest.fixture(scope="module")
def real():
    d = np.load(DATA)
    return {k: d[k].astype(np.float32) if k in "QKV" else d[k] for k in d.files}


@pytest.mark.parametrize("layer_index", [0, 1, 2])
def test_recall_of_exact_topk_at_default_settings(real, layer_index):
    """Recall of the exact top-k keys (by q.k, causal) among the keys the default settings attend to (k-NN forced
    on with min_keys=0: at the default min_keys, 4096, every row of this 2048-token capture runs exact)."""
    q, k = real["Q"][layer_index, 0], real["K"][layer_index, 0]
    recall = recall_at_k(q, k, np.arange(600, q.shape[0], 13), is_causal=1, min_keys=0)
    # Measured 1.000 / 1.000 / 1.000 (layers 0 / 13 / 24): at 2048 keys the block sets of the default budget cover
    # most keys, so most blocks go exact (the test below shrinks the budget); the issue asks for >= 0.9.
    assert recall >= 0.97, (real["layers"][layer_index], recall)


def test_output_error_against_exact_at_default_settings(real):
    """All three layers through the op (k-NN forced on with min_keys=0) vs the exact path: mean relative error
    per layer below 2.5% (measured 0.00% / 0.005% / 0.005% at 2048 tokens; 4k/8k figures are in the README)."""
    knn = ort.InferenceSession(
        make_knn_attention_model(is_causal=1, min_keys=0).SerializeToString(),
        session_options(2),
        providers=["CPUExecutionProvider"],
    )
    exact = ort.InferenceSession(
        make_knn_attention_model(is_causal=1, top_k=0).SerializeToString(),
        session_options(2),
        providers=["CPUExecutionProvider"],
    )
    first = contract.knn_threshold({**DEFAULTS, "min_keys": 0}) - 1
    for li in range(3):
        feeds = {"Q": real["Q"][li][None], "K": real["K"][li][None], "V": real["V"][li][None]}
        y, ref = knn.run(None, feeds)[0], exact.run(None, feeds)[0]
        err = np.linalg.norm(y - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert err[0, :, first:].mean() < 0.025, (real["layers"][li], err[0, :, first:].mean())


SMALL = {"min_keys": 0, "top_k": 32, "max_candidates": 32, "tail_samples": 256, "tail_limit": 0.3}


def test_block_sets_on_real_activations(real, tmp_path, monkeypatch):
    """A budget scaled to 2048 keys (32 per row) with 256 tail samples and tail_limit 0.3 (the default 1024 samples
    would make every block's set cost more than exact attention at 2048 keys), so that the block sets run on most
    rows of layers 13 and 24:
    recall of the exact top-32 among the attended keys and output error against the exact path (measured:
    recall 1.000 / 0.977 / 0.987, error 0.07% / 0.70% / 3.0%, rows on the sets 3% / 60% / 60%; layer 0 is diffuse
    and goes exact by tail_limit)."""
    stats = tmp_path / "stats.jsonl"
    monkeypatch.setenv("ICEFORMER_STATS", str(stats))
    knn = ort.InferenceSession(
        make_knn_attention_model(is_causal=1, **SMALL).SerializeToString(),
        session_options(2),
        providers=["CPUExecutionProvider"],
    )
    exact = ort.InferenceSession(
        make_knn_attention_model(is_causal=1, top_k=0).SerializeToString(),
        session_options(2),
        providers=["CPUExecutionProvider"],
    )
    for li, (min_recall, max_err, min_sets) in enumerate([(0.95, 0.01, 0.0), (0.95, 0.02, 0.5), (0.95, 0.045, 0.5)]):
        q, k = real["Q"][li, 0], real["K"][li, 0]
        recall = recall_at_k(q, k, np.arange(600, q.shape[0], 13), is_causal=1, **SMALL)
        feeds = {"Q": real["Q"][li][None], "K": real["K"][li][None], "V": real["V"][li][None]}
        y = knn.run(None, feeds)[0]
        call = json.loads(stats.read_text().splitlines()[-1])
        ref = exact.run(None, feeds)[0]
        err = (np.linalg.norm(y - ref, axis=-1) / np.linalg.norm(ref, axis=-1))[0, :, 200:].mean()
        on_sets = 1 - call["fallback_rows"] / call["knn_rows"]
        assert recall >= min_recall and err < max_err and on_sets >= min_sets, (
            real["layers"][li],
            recall,
            err,
            on_sets,
        )
