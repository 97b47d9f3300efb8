"""Metrics and evaluation helpers shared by the tools, batch/ and the tests (no command-line code here).

- language-model metrics of a decoder exported with last_hidden_state (+ lm_head.npy): perplexity of ids[t+1]
  given position t (logits in chunks: 49k vocabulary), greedy next-token agreement, the repeat test (a text of
  N/2 tokens twice; perplexity on the second copy needs attention N/2 back), Brown Corpus token ids;
- retrieval prompts every runtime can take (passkey; LongEval-style lines), with the answer at a known depth:
  both questions end with the answer's prefix ("... is <"), so the answer is a copy of a span seen once, far
  back. A prompt is built from token ids (pieces tokenised apart and joined), so its length and the answer's
  position are exact. A runtime that generates is correct iff its len(answer) greedy tokens equal the answer; one
  that only returns hidden states is fed prompt + answer and is correct iff the greedy prediction at every answer
  position is the answer token (teacher forcing: exactly what greedy decoding would produce);
- the op's accuracy on one call: recall of the exact top-k keys among those the k-NN path attends to, the rows
  that may take the k-NN path, relative output error;
- peak resident memory of one onnxruntime run in a fresh process.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .models import corpus
from .ops import contract
from .ops._library import knn_select

__all__ = [
    "feeds",
    "nll_sum",
    "logits_stats",
    "perplexity",
    "tokenizer",
    "text_ids",
    "repeat_ids",
    "RetrievalPrompt",
    "passkey_prompt",
    "line_prompt",
    "generated_correct",
    "forced_predictions",
    "forced_correct",
    "answer_token_accuracy",
    "recall_at_k",
    "eligible_rows",
    "relative_error",
    "peak_rss_mib",
]

# --- language-model metrics -------------------------------------------------------------------------------------


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
    from .models.export import decoder

    return decoder(model).tokenizer()


def text_ids(tok, n: int, start: int = 100, special_tokens: bool = True) -> list[int]:
    """n tokens of Brown Corpus text (samples from `start` on); special_tokens=False: none of the tokenizer's own
    (text pieces joined into a longer prompt)."""
    ids: list[int] = []
    text, count = "", 60
    while len(ids) < n:
        longer = corpus.brown_text(start=start, count=count)
        if len(longer) == len(text):  # the samples ran out (the corpus has 500)
            raise ValueError(f"the Brown Corpus from sample {start} on holds {len(ids)} tokens, fewer than {n}")
        text, count = longer, 2 * count
        ids = tok(text, add_special_tokens=special_tokens).input_ids
    return ids[:n]


def repeat_ids(tok, n: int, start: int = 300) -> list[int]:
    """A Brown text of n//2 tokens, twice (score from n//2 on)."""
    half = text_ids(tok, n // 2, start)
    return half + half


# --- retrieval prompts ------------------------------------------------------------------------------------------

PASSKEY_HEAD = (
    "There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it: "
    "at the end I will ask you for the pass key.\n\n"
)
PASSKEY_QUESTION = "\n\nThe text is over. What is the pass key?\nThe pass key is <"
LINES_HEAD = (
    "Below is a record of lines I want you to remember. Each line begins with 'line <line index>' and "
    "contains a '<REGISTER_CONTENT>' at the end of the line. Memorize the <REGISTER_CONTENT> of each line: "
    "at the end of the record I will ask you for the <REGISTER_CONTENT> of one line index.\n\n"
)


@dataclass(frozen=True)
class RetrievalPrompt:
    kind: str  # "passkey" or "lines"
    prompt: list[int]  # the question ends with the answer's prefix; generation starts right after it
    answer: list[int]  # the answer's digits ("58231"; the closing ">" may merge with what follows it)
    needle: int  # token position where the needle (pass key sentence / asked line) starts
    value: int
    depth: float = field(default=0.0)  # needle / len(prompt)

    @property
    def ids(self) -> list[int]:
        """prompt + answer: what a runtime without generation is fed (teacher forcing)."""
        return self.prompt + self.answer


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


def passkey_prompt(tok, n: int, depth: float, seed: int) -> RetrievalPrompt:
    """A prompt of exactly n tokens (+ the answer) with the pass key sentence starting at `depth` of it."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must lie in [0, 1], got {depth}")
    value = int(np.random.default_rng(seed).integers(10000, 100000))
    head, question = _ids(tok, PASSKEY_HEAD), _ids(tok, PASSKEY_QUESTION)
    needle = _ids(tok, f"\n\nThe pass key is <{value}>. Remember it. <{value}> is the pass key.\n\n")
    fill = n - len(head) - len(question) - len(needle)
    if fill < 0:
        raise ValueError(f"{n} tokens cannot hold the pass key prompt ({n - fill} tokens without filler)")
    text = text_ids(tok, fill, start=100 + 7 * (seed % 50), special_tokens=False)
    cut = round(depth * fill)
    prompt = head + text[:cut] + needle + text[cut:] + question
    return RetrievalPrompt("passkey", prompt, _ids(tok, str(value)), len(head) + cut, value, (len(head) + cut) / n)


def line_prompt(tok, n: int, seed: int, depth: float | None = None) -> RetrievalPrompt:
    """A line-retrieval prompt of at most n tokens; the asked line at `depth` of the record (random when None)."""
    rng = np.random.default_rng(seed)
    head = _ids(tok, LINES_HEAD)
    lines: list[list[int]] = []
    values: list[int] = []
    used = len(head) + 40  # room for the question
    while True:
        v = int(rng.integers(10000, 100000))
        line = _ids(tok, f"line {len(lines)}: REGISTER_CONTENT is <{v}>\n")
        if used + len(line) > n:
            break
        lines.append(line)
        values.append(v)
        used += len(line)
    if len(lines) < 2:
        raise ValueError(f"{n} tokens cannot hold a line-retrieval prompt")
    asked = int(rng.integers(0, len(lines))) if depth is None else min(len(lines) - 1, int(depth * len(lines)))
    question = _ids(
        tok,
        f"\nThe record is over. What is the <REGISTER_CONTENT> in line {asked}?\nline {asked}: REGISTER_CONTENT is <",
    )
    body = [t for line in lines for t in line]
    prompt = head + body + question
    needle = len(head) + sum(len(line) for line in lines[:asked])
    return RetrievalPrompt("lines", prompt, _ids(tok, str(values[asked])), needle, values[asked], needle / len(prompt))


def generated_correct(p: RetrievalPrompt, generated: list[int]) -> bool:
    """A generating runtime's greedy tokens (at least len(answer) of them) start with the answer."""
    return list(generated[: len(p.answer)]) == p.answer


def forced_predictions(hidden: np.ndarray, lm_head: np.ndarray, p: RetrievalPrompt) -> np.ndarray:
    """Greedy predictions at the answer positions, from hidden states of p.ids (teacher forcing)."""
    pos = np.arange(len(p.prompt) - 1, len(p.prompt) - 1 + len(p.answer))
    return (hidden[pos] @ lm_head.T).argmax(-1)


def forced_correct(hidden: np.ndarray, lm_head: np.ndarray, p: RetrievalPrompt) -> bool:
    return bool(np.array_equal(forced_predictions(hidden, lm_head, p), np.asarray(p.answer)))


def answer_token_accuracy(hidden: np.ndarray, lm_head: np.ndarray, p: RetrievalPrompt) -> float:
    """Share of answer tokens predicted greedily given the previous ones (teacher forcing)."""
    return float(np.mean(forced_predictions(hidden, lm_head, p) == np.asarray(p.answer)))


# --- the op's accuracy on one call -----------------------------------------------------------------------------


def recall_at_k(q: np.ndarray, k: np.ndarray, rows, *, is_causal: int, **attrs) -> float:
    """Mean over query `rows` of |exact top_k keys by q.k among the visible ones, and the attended keys| / top_k.

    q [S,D], k [T,D] of one head; attrs: KnnAttention attributes over the contract defaults. Rows that see no
    more than top_k keys, or fewer than the k-NN threshold (min_keys, top_k + local_window + num_sink + 1; they run
    exact), are left out (their recall is 1 by construction).
    """
    settings = {**contract.attribute_defaults(), **attrs}
    settings = {a: v for a, v in settings.items() if a not in ("scale", "is_causal")}
    top_k = settings["top_k"]
    threshold = contract.knn_threshold(settings)
    S, T = q.shape[0], k.shape[0]
    rows = np.unique(np.asarray(list(rows), dtype=np.int64))
    ids, _ = knn_select(q, k, is_causal=is_causal, rows=rows, **settings)
    hits = []
    for t, i in enumerate(rows):
        last = i + T - S if is_causal else T - 1
        if last + 1 <= top_k or last + 1 < threshold:
            continue
        z = q[i] @ k[: last + 1].T
        hits.append(len(np.intersect1d(np.argpartition(-z, top_k)[:top_k], ids[t])) / top_k)
    return float(np.mean(hits)) if hits else 1.0


def eligible_rows(S: int, T: int, causal: bool, attrs: dict) -> slice:
    """Query rows that may take the k-NN path: under causality, those seeing at least the k-NN threshold of keys."""
    if not causal:
        return slice(0, S)
    threshold = contract.knn_threshold(attrs)
    return slice(min(S, max(0, threshold - 1 - (T - S))), S)


def relative_error(y: np.ndarray, ref: np.ndarray, rows: slice) -> tuple[float, float]:
    """(mean over heads and rows, worst head's mean) of |y - ref| / |ref| per output row ([B, H, S, Dv])."""
    num = np.linalg.norm((y - ref)[:, :, rows].astype(np.float64), axis=-1)
    den = np.maximum(np.linalg.norm(ref[:, :, rows].astype(np.float64), axis=-1), 1e-30)
    e = num / den
    if e.size == 0:
        return 0.0, 0.0
    return float(e.mean()), float(e.mean(axis=(0, 2)).max())


# --- memory ----------------------------------------------------------------------------------------------------


def peak_rss_mib(model: str, feeds: dict[str, np.ndarray], threads: int = 2, with_library: bool = True) -> float:
    """Peak RSS (MiB) of a fresh process that loads `model` and runs it once on `feeds`."""
    with tempfile.TemporaryDirectory(prefix="ice-mem-") as tmp:
        path = Path(tmp) / "feeds.npz"
        np.savez(path, **feeds)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "iceformer.tools.memory",
                str(model),
                str(path),
                str(threads),
                "1" if with_library else "0",
            ],
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"the memory probe for {model} exited with code {proc.returncode}: {tail[0]}")
    return float(proc.stdout.strip().splitlines()[-1])
