"""Retrieval checks that every runtime can take: a prompt whose answer sits at a known depth, scored by greedy
generation.

- passkey: Brown Corpus text with "The pass key is <58231>." hidden at a chosen depth, asked at the end;
- lines: LongEval-style "line 17: REGISTER_CONTENT is <48211>" lines, then a question about one line.
Both questions end with the answer's prefix ("... is <"), so the answer is a copy of a span seen once, far back:
the model must attend to it. A prompt is built from token ids (pieces tokenised apart and joined), so its length
and the answer's position are exact. Scoring: a runtime that generates (genai, OpenVINO) is correct iff its
`len(answer)` greedy tokens equal the answer; a runtime that only returns hidden states is fed prompt + answer
once and is correct iff the greedy prediction at every answer position is the answer token (teacher forcing:
exactly what greedy decoding would produce).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .lm_eval import text_ids

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
