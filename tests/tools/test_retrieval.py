"""iceformer.metrics: retrieval prompts with the answer at a known position (exact token counts), and both scorings."""

import numpy as np
import pytest

from iceformer import metrics


@pytest.fixture(scope="module")
def tok():
    return metrics.tokenizer("smollm2")


@pytest.mark.slow
@pytest.mark.models
@pytest.mark.parametrize("n,depth", [(512, 0.0), (2048, 0.5), (4096, 1.0)])
def test_passkey_prompt_has_exact_length_and_needle_position(tok, n, depth):
    p = metrics.passkey_prompt(tok, n, depth, seed=3)
    assert len(p.prompt) == n and p.ids == p.prompt + p.answer
    assert tok.decode(p.answer) == str(p.value) and 10000 <= p.value < 100000
    # the needle starts at its token position: the first pass key mention follows it
    assert tok.decode(p.prompt[p.needle :]).startswith(f"\n\nThe pass key is <{p.value}>")
    assert tok.decode(p.prompt).count(str(p.value)) == 2  # said twice in the needle, never elsewhere
    assert tok.decode(p.prompt).endswith("The pass key is <")
    fixed = [
        len(tok(t, add_special_tokens=False).input_ids)
        for t in (
            metrics.PASSKEY_HEAD,
            metrics.PASSKEY_QUESTION,
            f"\n\nThe pass key is <{p.value}>. Remember it. <{p.value}> is the pass key.\n\n",
        )
    ]
    assert p.needle == fixed[0] + round(depth * (n - sum(fixed))) and p.depth == p.needle / n
    assert metrics.passkey_prompt(tok, n, depth, seed=3) == p  # seeded


@pytest.mark.models
def test_passkey_prompt_rejects_what_cannot_fit(tok):
    with pytest.raises(ValueError, match="cannot hold"):
        metrics.passkey_prompt(tok, 40, 0.5, seed=0)
    with pytest.raises(ValueError, match="depth"):
        metrics.passkey_prompt(tok, 512, 1.5, seed=0)


@pytest.mark.slow
@pytest.mark.models
@pytest.mark.parametrize("n,depth", [(512, 0.0), (2048, 0.5), (2048, None)])
def test_line_prompt_fits_and_asks_the_needle_line(tok, n, depth):
    p = metrics.line_prompt(tok, n, seed=5, depth=depth)
    assert len(p.prompt) <= n and len(p.prompt) > n - 60
    assert tok.decode(p.answer) == str(p.value)
    text = tok.decode(p.prompt)
    line = text.rsplit("line ", 1)[1].split(":")[0]
    assert tok.decode(p.prompt[p.needle :]).startswith(f"line {line}: REGISTER_CONTENT is <{p.value}>\n")
    assert text.endswith(f"line {line}: REGISTER_CONTENT is <")
    if depth == 0.0:
        assert line == "0"
    assert metrics.line_prompt(tok, n, seed=5, depth=depth) == p


def test_scorings_agree_on_a_known_model():
    lm_head = np.eye(8, dtype=np.float32)  # logits = hidden: the prediction at t is argmax(hidden[t])
    p = metrics.RetrievalPrompt("lines", prompt=[0, 1, 2], answer=[5, 6, 7], needle=0, value=0)
    hidden = np.zeros((6, 8), np.float32)
    hidden[2, 5] = hidden[3, 6] = hidden[4, 7] = 1.0  # predicts 5, 6, 7 at positions 2, 3, 4
    assert metrics.forced_correct(hidden, lm_head, p) and metrics.answer_token_accuracy(hidden, lm_head, p) == 1.0
    hidden[3] = 0.0
    hidden[3, 1] = 1.0
    assert not metrics.forced_correct(hidden, lm_head, p)
    assert metrics.answer_token_accuracy(hidden, lm_head, p) == pytest.approx(2 / 3)
    assert metrics.generated_correct(p, [5, 6, 7, 0]) and not metrics.generated_correct(p, [5, 6])
    assert not metrics.generated_correct(p, [5, 1, 7])


@pytest.mark.models
def test_text_ids_reports_a_corpus_too_short(tok):
    """Samples from 480 on (of 500) hold fewer than 10**6 tokens: an error naming both, never an endless loop."""
    assert len(metrics.text_ids(tok, 300, start=480)) == 300
    with pytest.raises(ValueError, match=r"from sample 480 on holds \d+ tokens, fewer than 1000000"):
        metrics.text_ids(tok, 10**6, start=480)
    with pytest.raises(ValueError, match="from sample 700 on holds 0 tokens"):
        metrics.text_ids(tok, 10, start=700)
