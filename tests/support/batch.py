"""Shared by the ice-batch tests: a small corpus of Brown Corpus documents plus bad ones, the job options they all
use, and the results of a job read back by document id."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from iceformer.batch import BatchOptions
from iceformer.models import corpus

GOOD = 10
BAD = {  # id -> (raw JSON line or document, the error row's reason)
    "empty": ({"id": "empty", "text": ""}, "no tokens (empty document)"),
    "null": ({"id": "null", "text": None}, "no text (null or missing)"),
    "number": ({"id": "number", "text": 42}, "text is int, not a string"),
    "surrogate": ('{"id": "surrogate", "text": "x\\ud800y"}', "text is not valid Unicode (surrogates not allowed"),
    "line-15": (b'{"id": "bad-utf8", "text": "ab\xff"}', "line 15 is not valid UTF-8 JSON"),
    "too-long": ({"id": "too-long", "text": " ".join(["word"] * 400)}, "400 tokens, more than --max-tokens 320"),
}
DOCUMENTS = GOOD + len(BAD)
MAX_TOKENS = 320


def write_docs(path: Path) -> Path:
    """GOOD Brown documents of about 40-280 tokens, then the BAD lines, as JSON lines."""
    with open(path, "wb") as f:
        for i in range(GOOD):
            text = corpus.brown_text(start=3 * i, count=1)[: 200 + 120 * i]
            f.write(json.dumps({"id": f"doc{i}", "text": text}).encode() + b"\n")
        for line, _ in BAD.values():
            f.write(line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode())
            f.write(b"\n")
    return path


def options(docs, model, out, **kw) -> BatchOptions:
    return BatchOptions(str(docs), str(out), str(model), "smollm2", **{"max_tokens": MAX_TOKENS, "batch_size": 3, **kw})


def cli_args(docs, model, out, *extra: str) -> list[str]:
    """ice-batch's arguments for the same job as options()."""
    return [str(docs), str(out), "--model", str(model), "--tokenizer", "smollm2", "--max-tokens", str(MAX_TOKENS),
            "--batch-size", "3", *extra]  # fmt: skip


def results(out: Path) -> dict:
    """id -> result row (without the timing column); every id must appear once."""
    table = pq.read_table(out).drop(["seconds"]).sort_by("id")
    ids = table["id"].to_pylist()
    assert len(ids) == len(set(ids)), "a document appears twice in the output"
    return {r["id"]: r for r in table.to_pylist()}
