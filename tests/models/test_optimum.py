"""optimum's ORTModelForCausalLM.generate() on SmolLM2-135M-Instruct (real weights) exported with past by
ice-export --form optimum and rewritten as a folder by ice-rewrite: generation runs through our KnnAttention with
optimum's own KV cache handling (past_key_values in, present out, Concat inside the graph). Greedy tokens after a
3072-token Brown Corpus prompt against the same folder without iceformer (ONNX Runtime's kernels).

Measured 2026-12-06, 2 threads (numbers at the tests)."""

import json

import numpy as np
import onnxruntime as ort
import pytest
from iceformer.models import export_optimum
from iceformer.ops import session_options

from iceformer import RewriteOptions, metrics, rewrite

pytestmark = [pytest.mark.slow, pytest.mark.models, pytest.mark.exports]
optimum_ort = pytest.importorskip("optimum.onnxruntime")
torch = pytest.importorskip("torch")

PROMPT, NEW = 3072, 32
# Small enough that a 3072-token prompt takes the k-NN path in prefill and decode with a set under half the keys.
KNN = {"min_keys": 1024, "decode_min_keys": 1024, "top_k": 64, "max_candidates": 128, "tail_samples": 512}


def _load(folder, ours):
    opts = session_options(2) if ours else ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return optimum_ort.ORTModelForCausalLM.from_pretrained(
        folder, session_options=opts, use_cache=True, provider="CPUExecutionProvider"
    )


def _generate(model, ids):
    x = torch.tensor([ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW, do_sample=False)
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    src = export_optimum("smollm2")
    tmp = tmp_path_factory.mktemp("optimum")
    out = {"dense": src}
    for name, attrs in (("exact", {"top_k": 0}), ("knn", KNN)):
        report = rewrite(src, tmp / name, RewriteOptions(attributes=attrs))
        assert report.replaced_by_form == {"DecomposedSdpa": 30} and report.softmax_unmatched == 0
        assert any("ORTModelForCausalLM" in n for n in report.notes)
        out[name] = tmp / name
    return out


@pytest.fixture(scope="module")
def prompt():
    return metrics.text_ids(metrics.tokenizer(), PROMPT)


@pytest.fixture(scope="module")
def dense_tokens(folders, prompt):
    return _generate(_load(folders["dense"], ours=False), prompt)


def test_the_folder_is_copied_with_its_config_and_tokenizer(folders):
    names = lambda d: sorted(p.name for p in d.iterdir())  # noqa: E731
    assert names(folders["knn"]) == names(folders["dense"])
    assert (folders["knn"] / "config.json").read_bytes() == (folders["dense"] / "config.json").read_bytes()


def test_exact_path_generates_what_onnx_runtime_generates(folders, prompt, dense_tokens):
    assert _generate(_load(folders["exact"], ours=True), prompt) == dense_tokens


def test_knn_decode_through_optimum_generate(folders, prompt, dense_tokens, tmp_path, monkeypatch):
    """Decode steps (S = 1, 3072+ keys) take the k-NN path over the prompt's index (no rebuild: optimum feeds
    Concat(past, new), the index follows the content) and the greedy continuation stays dense's. Measured: 898 of
    930 steps on the k-NN path (the others' groups declined: a heavy tail), the 32 tokens equal dense's."""
    stats = tmp_path / "stats.jsonl"
    monkeypatch.setenv("ICEFORMER_STATS", str(stats))
    got = _generate(_load(folders["knn"], ours=True), prompt)
    calls = [json.loads(line) for line in stats.read_text().splitlines()]
    steps = [c for c in calls if c["S"] == 1]
    assert len(steps) == 30 * (NEW - 1), len(steps)  # 30 layers, every token after the first
    knn = [c for c in steps if c["path"] == "knn"]
    assert len(knn) >= 0.9 * len(steps), (len(knn), len(steps))  # the rest declined (a heavy tail): flash decoding
    assert sum(c["index_rebuilds"] for c in steps) == 0
    assert np.mean([c["mean_candidates"] for c in steps]) < 0.5 * PROMPT
    assert got == dense_tokens, (got, dense_tokens)
