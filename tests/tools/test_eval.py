"""tools/: ice-eval's building blocks (line-retrieval prompts, teacher-forced scoring, the memory probe) and
ice-eval itself on MiniLM (real weights, slow)."""

import json

import numpy as np
import pytest

from iceformer.ops import make_knn_attention_model
from iceformer.tools import eval as ice_eval
from iceformer.tools import lm_eval
from iceformer.tools.memory import peak_rss_mib


@pytest.mark.slow
def test_line_prompt_fits_and_ends_with_its_answer():
    tok = lm_eval.tokenizer()
    for n, seed in ((512, 0), (2048, 3)):
        p = lm_eval.line_prompt(tok, n, seed)
        assert len(p.ids) <= n and p.answer_start + p.answer_len == len(p.ids)
        assert tok.decode(p.ids[p.answer_start:]) == f"{p.value}>"
        text = tok.decode(p.ids[: p.answer_start])
        assert f"line {p.line}: REGISTER_CONTENT is <{p.value}>" in text and text.endswith(f"line {p.line}: REGISTER_CONTENT is <")
    assert lm_eval.line_prompt(tok, 1024, 5) == lm_eval.line_prompt(tok, 1024, 5)  # seeded


def test_teacher_forced_scoring_counts_answer_tokens():
    lm_head = np.eye(8, dtype=np.float32)  # logits = hidden: the prediction at t is argmax(hidden[t])
    p = lm_eval.LinePrompt(ids=[0, 1, 2, 5, 6, 7], answer_start=3, answer_len=3, line=0, value=0)
    hidden = np.zeros((6, 8), np.float32)
    hidden[2, 5] = hidden[3, 6] = hidden[4, 7] = 1.0  # predicts 5, 6, 7 at positions 2, 3, 4
    assert lm_eval.line_correct(hidden, lm_head, p) and lm_eval.answer_token_accuracy(hidden, lm_head, p) == 1.0
    hidden[3] = 0.0
    hidden[3, 1] = 1.0
    assert not lm_eval.line_correct(hidden, lm_head, p)
    assert lm_eval.answer_token_accuracy(hidden, lm_head, p) == pytest.approx(2 / 3)


def test_perplexity_of_a_known_distribution():
    lm_head = np.eye(4, dtype=np.float32)
    hidden = np.log(np.full((3, 4), 0.25, np.float32))  # uniform over 4 tokens: perplexity 4
    ppl, preds = lm_eval.perplexity(hidden, lm_head, [0, 1, 2], 0)
    assert ppl == pytest.approx(4.0, rel=1e-5) and preds.shape == (2,)


def test_memory_probe_runs_in_a_child_and_reports_failure(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(make_knn_attention_model().SerializeToString())
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((1, 2, 64, 16)).astype(np.float32) for n in ("Q", "K", "V")}
    assert 20 < peak_rss_mib(str(path), feeds, 1) < 4096
    with pytest.raises(RuntimeError, match="exited with code"):
        peak_rss_mib(str(tmp_path / "missing.onnx"), feeds, 1)


@pytest.mark.slow
def test_ice_eval_minilm_writes_json_and_cosines(tmp_path):
    assert ice_eval.main(["--tokens", "--minilm", "--attrs", '{"min_keys": 0}', "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert [r["model"] for r in result["minilm"]] == ["fp32 (dynamo export)", "int8 (third-party file)"]
    assert all(r["cos_min"] >= 0.9999 and r["tokens"] == 512 for r in result["minilm"])
