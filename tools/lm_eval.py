"""End metrics of a decoder exported with last_hidden_state (+ lm_head.npy): one definition for ice-main,
ice-eval and the real-model tests.

- perplexity of ids[t+1] given position t (logits in chunks: 49k vocabulary);
- greedy next-token agreement between two runs;
- the repeat test (a text of N/2 tokens twice; perplexity on the second copy needs attention N/2 back);
- LongEval-style line retrieval: "line 17: REGISTER_CONTENT is <4821>" lines up to the length, then a question
  about one line; the answer is scored by teacher forcing (correct iff the greedy prediction at every answer
  token is that token: exactly what greedy decoding would produce, in one forward pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..models import corpus


def feeds(ids: list[int]) -> dict[str, np.ndarray]:
    """The decoder export's inputs for one unpadded sequence."""
    return {"input_ids": np.asarray([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}


def logits_stats(hidden: np.ndarray, lm_head: np.ndarray, ids: list[int], start: int, chunk: int = 512):
    """(sum of NLL of ids[t+1] for t in [start, len-1), count, greedy predictions at those t)."""
    total, count, preds = 0.0, 0, []
    for s in range(start, len(ids) - 1, chunk):
        e = min(len(ids) - 1, s + chunk)
        logits = hidden[s:e] @ lm_head.T
        m = logits.max(-1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(logits - m).sum(-1))
        target = np.asarray(ids[s + 1 : e + 1])
        total += float((lse - logits[np.arange(e - s), target]).sum())
        count += e - s
        preds.append(logits.argmax(-1))
    return total, count, (np.concatenate(preds) if preds else np.zeros(0, np.int64))


def perplexity(hidden: np.ndarray, lm_head: np.ndarray, ids: list[int], start: int = 0) -> tuple[float, np.ndarray]:
    """exp(mean NLL) of ids[t+1] given position t, for t >= start; and the greedy predictions."""
    total, count, preds = logits_stats(hidden, lm_head, ids, start)
    return float(np.exp(total / count)), preds


def tokenizer():
    from ..models import smollm2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2.hf_dir())
    tok.add_bos_token = False
    return tok


def text_ids(tok, n: int, start: int = 100) -> list[int]:
    """n tokens of Brown Corpus text (samples from `start` on)."""
    ids: list[int] = []
    count = 60
    while len(ids) < n:
        ids = tok(corpus.brown_text(start=start, count=count)).input_ids
        count *= 2
    return ids[:n]


def repeat_ids(tok, n: int, start: int = 300) -> list[int]:
    """A Brown text of n//2 tokens, twice (score from n//2 on)."""
    half = text_ids(tok, n // 2, start)
    return half + half


@dataclass(frozen=True)
class LinePrompt:
    ids: list[int]
    answer_start: int  # position of the first answer token in ids
    answer_len: int
    line: int
    value: int


def line_prompt(tok, n: int, seed: int, question: int | None = None) -> LinePrompt:
    """A LongEval-style line-retrieval prompt of at most n tokens, ending with the answer (teacher forcing)."""
    rng = np.random.default_rng(seed)
    head = ("Below is a record of lines I want you to remember. Each line begins with 'line <line index>' and "
            "contains a '<REGISTER_CONTENT>' at the end of the line. Memorize the <REGISTER_CONTENT> of each line: "
            "at the end of the record I will ask you for the <REGISTER_CONTENT> of one line index.\n\n")
    per_line = len(tok("line 100: REGISTER_CONTENT is <12345>\n").input_ids)
    budget = n - len(tok(head).input_ids) - 60
    count = max(2, budget // per_line)
    values = rng.integers(10000, 100000, size=count)
    line = int(rng.integers(0, count)) if question is None else question
    for _ in range(4):  # trim until it fits (line lengths vary with the index)
        body = "".join(f"line {i}: REGISTER_CONTENT is <{values[i]}>\n" for i in range(count))
        # The question restates the line's prefix, so the answer is a copy from the right line (induction).
        ask = f"\nThe record is over. What is the <REGISTER_CONTENT> in line {line}?\nline {line}: REGISTER_CONTENT is <"
        prompt = tok(head + body + ask).input_ids
        answer = tok(f"{values[line]}>", add_special_tokens=False).input_ids
        if len(prompt) + len(answer) <= n:
            break
        count -= (len(prompt) + len(answer) - n) // per_line + 1
        line = min(line, count - 1)
    return LinePrompt(prompt + answer, len(prompt), len(answer), line, int(values[line]))


def line_correct(hidden: np.ndarray, lm_head: np.ndarray, p: LinePrompt) -> bool:
    """Greedy predictions at the answer positions equal the answer tokens."""
    pos = np.arange(p.answer_start - 1, p.answer_start - 1 + p.answer_len)
    pred = (hidden[pos] @ lm_head.T).argmax(-1)
    return bool(np.array_equal(pred, np.asarray(p.ids[p.answer_start : p.answer_start + p.answer_len])))


def answer_token_accuracy(hidden: np.ndarray, lm_head: np.ndarray, p: LinePrompt) -> float:
    """Fraction of answer tokens the model predicts greedily given the previous ones (teacher forcing)."""
    pos = np.arange(p.answer_start - 1, p.answer_start - 1 + p.answer_len)
    pred = (hidden[pos] @ lm_head.T).argmax(-1)
    return float(np.mean(pred == np.asarray(p.ids[p.answer_start : p.answer_start + p.answer_len])))
