"""SmolLM2-135M-Instruct (real weights) in onnxruntime-genai's form (ice-export --form genai), generated through
onnxruntime-genai, original against rewritten: exact with the defaults at 2048 tokens, and with the k-NN path forced
on (min_keys 256) the first generated token and most 32-token greedy continuations unchanged, on Brown prompts.

Measured 2026-12-01, 2 threads: defaults 4/4 prompts identical; k-NN forced: first token 4/4, 32 tokens 3/4.
With k-NN decode (small budgets, from 1024 keys) the decode steps take the k-NN path; measured 2026-12-06 below."""

import json
from pathlib import Path

import numpy as np
import pytest
from iceformer.models import export_genai, smollm2

from iceformer import RewriteOptions, metrics, rewrite
from tests.support.genai_check import assert_last_logits_match

og = pytest.importorskip("onnxruntime_genai")
pytestmark = [pytest.mark.slow, pytest.mark.models, pytest.mark.exports, pytest.mark.genai]

TOKENS, NEW, PROMPTS = 2048, 32, 4
# Small enough budgets that 2048 cached keys take k-NN decode (with the defaults it starts at decode_min_keys, 24576).
KNN_DECODE = {"min_keys": 1024, "decode_min_keys": 1024, "top_k": 16, "max_candidates": 32, "tail_samples": 256}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    src = export_genai("smollm2", max_length=4096)
    root = tmp_path_factory.mktemp("genai_smollm2")
    rewrite(src, root / "defaults")
    rewrite(src, root / "knn", RewriteOptions(attributes={"min_keys": 256}))
    rewrite(src, root / "knn-decode", RewriteOptions(attributes=KNN_DECODE))
    return {"original": src, "defaults": root / "defaults", "knn": root / "knn", "knn-decode": root / "knn-decode"}


def _generate(folder: Path, ids: list[int]) -> list[int]:
    config = og.Config(str(folder))
    config.overlay('{"model": {"decoder": {"session_options": {"intra_op_num_threads": 2}}}}')
    model = og.Model(config)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + NEW, do_sample=False, top_k=1)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(ids, np.int32))
    while not gen.is_done():
        gen.generate_next_token()
    return [int(t) for t in gen.get_sequence(0)[len(ids) :]]


def test_genai_form_matches_transformers(folders):
    """The exported graph computes what the transformers model computes (last-position logits, 100 tokens)."""
    assert_last_logits_match(folders["original"], smollm2.load("eager")[0], vocab=40000, atol=2e-4)


def test_generation_original_vs_rewritten(folders):
    tok = metrics.tokenizer()
    same = {"defaults": [0, 0], "knn": [0, 0]}  # [first token equal, all NEW tokens equal]
    for p in range(PROMPTS):
        ids = metrics.text_ids(tok, TOKENS, start=100 + 37 * p)
        want = _generate(folders["original"], ids)
        for name in same:
            got = _generate(folders[name], ids)
            same[name][0] += got[:1] == want[:1]
            same[name][1] += got == want
    assert same["defaults"] == [PROMPTS, PROMPTS]  # the exact path below 8192 keys: identical tokens
    assert same["knn"][0] == PROMPTS and same["knn"][1] >= PROMPTS - 1, same


def test_generation_with_knn_decode(folders, tmp_path, monkeypatch):
    """genai's generate() on a folder rewritten with k-NN decode from 1024 keys: every decode step of every layer takes
    the k-NN path over the index the prompt built (op statistics: no rebuild), and the greedy tokens mostly stay the
    original's. These budgets are 4-8x below the defaults and apply to the prefill too (measured: first token 3/4,
    73 of 128 tokens equal; with the defaults at 16k all 128 tokens matched genai's on both prompts,
    docs/results/bench_e2e_decode_int4_16k.md)."""
    stats = tmp_path / "stats.jsonl"
    monkeypatch.setenv("ICEFORMER_STATS", str(stats))
    tok = metrics.tokenizer()
    first = same = 0
    for p in range(PROMPTS):
        ids = metrics.text_ids(tok, TOKENS, start=100 + 37 * p)
        want = _generate(folders["original"], ids)
        got = _generate(folders["knn-decode"], ids)
        first += got[:1] == want[:1]
        same += sum(a == b for a, b in zip(got, want))
    steps = [json.loads(line) for line in stats.read_text().splitlines()]
    steps = [c for c in steps if c["S"] == 1]
    knn = sum(c["path"] == "knn" for c in steps)
    assert len(steps) >= PROMPTS * (NEW - 2) * 30 and knn >= 0.9 * len(steps), (knn, len(steps))  # 30 layers
    assert all(c["index_rebuilds"] == 0 for c in steps)  # the prompt built every index
    assert first >= PROMPTS - 1 and same >= 0.5 * PROMPTS * NEW, (first, same)


def test_step_by_step_scoring_equals_one_forward_pass(folders):
    """ice-bench-e2e --score-tokens: the genai worker feeds a continuation one decode step at a time and scores each
    token from the logits before it; on the original folder that is the transformers model's teacher-forced NLL over
    the whole text (fp32 in both: within 2e-3 per token) and the same greedy predictions."""
    import sys

    import torch
    from iceformer.tools.e2e_worker import Worker

    ids = metrics.text_ids(metrics.tokenizer(), 288, start=300)
    w = Worker(sys.executable, "genai", {"threads": 2, "model": str(folders["original"])})
    try:
        ans = w(ids[:256], 0, None, ids[256:])
    finally:
        w.close()
    with torch.no_grad():
        logits = smollm2.load("eager")[0](torch.tensor([ids])).logits[0, 255:-1].double()
    want = (torch.logsumexp(logits, -1) - logits[torch.arange(32), torch.tensor(ids[256:])]).numpy()
    np.testing.assert_allclose(ans["score_nll"], want, atol=2e-3)
    assert ans["score_preds"] == logits.argmax(-1).tolist()
