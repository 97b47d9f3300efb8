"""End metrics of a decoder exported with last_hidden_state (+ lm_head.npy): one definition for ice-main,
ice-eval and the real-model tests.

- perplexity of ids[t+1] given position t (logits in chunks: 49k vocabulary);
- greedy next-token agreement between two runs;
- the repeat test (a text of N/2 tokens twice; perplexity on the second copy needs attention N/2 back).
Retrieval prompts (passkey, line retrieval) live in retrieval.py.
"""

from __future__ import annotations

import numpy as np

from ..models import corpus


def feeds(ids: list[int]) -> dict[str, np.ndarray]:
    """The decoder export's inputs for one unpadded sequence."""
    return {"input_ids": np.asarray([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}


def nll_sum(logits: np.ndarray, target) -> float:
    """Sum over rows of -log softmax(logits[r])[target[r]] (logits [R, V])."""
    m = logits.max(-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(-1))
    return float((lse - logits[np.arange(len(logits)), np.asarray(target)]).sum())


def logits_stats(hidden: np.ndarray, lm_head: np.ndarray, ids: list[int], start: int, chunk: int = 512):
    """(sum of NLL of ids[t+1] for t in [start, len-1), count, greedy predictions at those t)."""
    total, count, preds = 0.0, 0, []
    for s in range(start, len(ids) - 1, chunk):
        e = min(len(ids) - 1, s + chunk)
        logits = hidden[s:e] @ lm_head.T
        total += nll_sum(logits, ids[s + 1 : e + 1])
        count += e - s
        preds.append(logits.argmax(-1))
    return total, count, (np.concatenate(preds) if preds else np.zeros(0, np.int64))


def perplexity(hidden: np.ndarray, lm_head: np.ndarray, ids: list[int], start: int = 0) -> tuple[float, np.ndarray]:
    """exp(mean NLL) of ids[t+1] given position t, for t >= start; and the greedy predictions."""
    total, count, preds = logits_stats(hidden, lm_head, ids, start)
    return float(np.exp(total / count)), preds


def tokenizer(model: str = "smollm2"):
    """The Hugging Face tokenizer of decoder recipe `model`, with the recipe's fixes."""
    from ..models.export import decoder

    return decoder(model).tokenizer()


def text_ids(tok, n: int, start: int = 100, special_tokens: bool = True) -> list[int]:
    """n tokens of Brown Corpus text (samples from `start` on); special_tokens=False: none of the tokenizer's own
    (text pieces joined into a longer prompt)."""
    ids: list[int] = []
    count = 60
    while len(ids) < n:
        ids = tok(corpus.brown_text(start=start, count=count), add_special_tokens=special_tokens).input_ids
        count *= 2
    return ids[:n]


def repeat_ids(tok, n: int, start: int = 300) -> list[int]:
    """A Brown text of n//2 tokens, twice (score from n//2 on)."""
    half = text_ids(tok, n // 2, start)
    return half + half
