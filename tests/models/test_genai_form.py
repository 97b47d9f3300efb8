"""SmolLM2-135M-Instruct (real weights) in onnxruntime-genai's form (ice-export --form genai), generated through
onnxruntime-genai, original against rewritten: exact with the defaults at 2048 tokens, and with the k-NN path forced
on (min_keys 256) the first generated token and most 32-token greedy continuations unchanged, on Brown prompts.

Measured 2026-12-01, 2 threads: defaults 4/4 prompts identical; k-NN forced: first token 4/4, 32 tokens 3/4."""

from pathlib import Path

import numpy as np
import pytest
from iceformer.models import export_genai, smollm2

from iceformer import RewriteOptions, metrics, rewrite
from tests.support.genai_check import assert_last_logits_match

og = pytest.importorskip("onnxruntime_genai")
pytestmark = [pytest.mark.slow, pytest.mark.models, pytest.mark.exports, pytest.mark.genai]

TOKENS, NEW, PROMPTS = 2048, 32, 4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    src = export_genai("smollm2", max_length=4096)
    root = tmp_path_factory.mktemp("genai_smollm2")
    rewrite(src, root / "defaults")
    rewrite(src, root / "knn", RewriteOptions(attributes={"min_keys": 256}))
    return {"original": src, "defaults": root / "defaults", "knn": root / "knn"}


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
