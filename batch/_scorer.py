"""The per-worker callable of a batch job: Ray Data builds one per actor (the stateful-class idiom of
`map_batches`), and the serial mode calls the same class in-process, so both give the same numbers.

One document -> one result row. A document that cannot be scored (not a string, not valid Unicode, no tokens,
longer than the model takes under --overflow error, a failed run) becomes a row with `error` set, never a failed
job. Long documents are truncated to --max-tokens, or scored in consecutive windows of --max-tokens (perplexity over
all windows' predictions; the embedding the token-weighted mean of the windows' means)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ._model import DocumentError, ModelRunner, ModelSpec
from ._tokenizer import Tokenizer, TokenizerSpec

OVERFLOW = ("error", "truncate", "window")


@dataclass(frozen=True)
class ScoreOptions:
    max_tokens: int = 4096
    overflow: str = "error"  # one of OVERFLOW
    threads: int | None = None  # None: the CPUs Ray gave the actor (1 outside Ray)


def _threads(requested: int | None) -> int:
    if requested:
        return requested
    try:
        import ray

        if ray.is_initialized():
            return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    except ImportError:
        pass
    return 1


class DocumentScorer:
    def __init__(self, model: ModelSpec, tokenizer: TokenizerSpec, options: ScoreOptions):
        self.options = options
        self.task = model.task
        self.tokenize = Tokenizer(tokenizer)
        self.runner = ModelRunner(model, _threads(options.threads))

    def _windows(self, ids: list[int]) -> list[list[int]]:
        n, cap = len(ids), self.options.max_tokens
        if n == 0:
            raise DocumentError("no tokens (empty document)")
        if n <= cap:
            return [ids]
        if self.options.overflow == "truncate":
            return [ids[:cap]]
        if self.options.overflow == "window":
            return [ids[s : s + cap] for s in range(0, n, cap)]
        raise DocumentError(f"{n} tokens, more than --max-tokens {cap} (choose --overflow truncate or window)")

    def score_text(self, text: str | None, input_error: str | None = None) -> dict:
        """The result columns of one document (without its id); input_error: why the reader could not use it."""
        t0 = time.perf_counter()
        row = {"tokens": 0, "scored": 0, "windows": 0, "error": None}
        try:
            if input_error is not None or not isinstance(text, str):
                raise DocumentError(input_error or f"text is {type(text).__name__}, not a string")
            ids = self.tokenize(text)
            row["tokens"] = len(ids)
            windows = self._windows(ids)
            parts = [self.runner.score(w) for w in windows]
            row.update(scored=sum(p["scored"] for p in parts), windows=len(windows))
            if self.task == "embed":
                mean = sum(p["embedding"] * p["scored"] for p in parts) / row["scored"]
                row["embedding"] = (mean / np.linalg.norm(mean)).astype(np.float32).tolist()
            else:
                if row["scored"] == 0:
                    raise DocumentError("one token: nothing to predict")
                row["nll"] = sum(p["nll"] for p in parts)
                row["perplexity"] = float(np.exp(row["nll"] / row["scored"]))
        except DocumentError as e:
            row["error"] = str(e)
        except Exception as e:  # a failed run (e.g. out of memory) is this document's failure, not the job's
            row["error"] = f"{type(e).__name__}: {e}"
        row.setdefault("embedding" if self.task == "embed" else "perplexity", None)
        if self.task != "embed":
            row.setdefault("nll", None)
        row["seconds"] = time.perf_counter() - t0
        return row

    def __call__(self, batch: dict[str, np.ndarray]):
        """A batch of read_input rows (Ray Data's numpy format: id, text, input_error) -> a pyarrow table of results (one schema for every
        batch, so shards written by different actors and runs read back as one dataset)."""
        rows = [self.score_text(t, e) for t, e in zip(batch["text"], batch["input_error"])]
        return result_table(self.task, [str(i) for i in batch["id"]], rows)


def result_table(task: str, ids: list[str], rows: list[dict]) -> pa.Table:
    """Result rows (dicts of the result columns but the id) of the documents `ids` as a table of result_schema."""
    schema = result_schema(task)
    cols = {"id": ids}
    cols.update({f.name: [r[f.name] for r in rows] for f in schema if f.name != "id"})
    return pa.Table.from_pydict(cols, schema=schema)


def result_schema(task: str) -> pa.Schema:
    value = (
        [pa.field("embedding", pa.list_(pa.float32()))]
        if task == "embed"
        else [pa.field("perplexity", pa.float64()), pa.field("nll", pa.float64())]
    )
    return pa.schema(
        [
            pa.field("id", pa.string()),
            pa.field("tokens", pa.int64()),
            pa.field("scored", pa.int64()),
            pa.field("windows", pa.int64()),
            *value,
            pa.field("error", pa.string()),
            pa.field("seconds", pa.float64()),
        ]
    )
