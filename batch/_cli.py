"""ice-batch: run a (rewritten) model over a corpus of documents on Ray Data, one result row per document,
written as Parquet shards with the document id. Re-running with the same output folder skips the documents
already there (resume).

  ice-batch docs.jsonl results/ --model smollm2.knn.onnx --tokenizer smollm2 --actors 2 [--overflow window]
  ice-batch docs.parquet s3://bucket/results/ --model genai-folder/ --address auto   # an existing Ray cluster
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ._job import SHARD_ROWS, BatchOptions, run_batch
from ._model import BatchError
from ._scorer import OVERFLOW


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e})") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("a JSON object is needed")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="ice-batch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("input", help="documents: .jsonl (one JSON object per line) or .parquet, with id and text columns")
    ap.add_argument("output", help="folder of Parquet result shards (created; results already there are skipped)")
    ap.add_argument(
        "--model",
        required=True,
        help="ONNX file (ice-export decoder or encoder, rewritten or not) or onnxruntime-genai model folder",
    )
    ap.add_argument(
        "--tokenizer",
        help="recipe (smollm2, qwen2.5-coder-0.5b, minilm) or Hugging Face tokenizer "
        "folder (default: the genai folder's tokenizer.json)",
    )
    ap.add_argument("--id-column", default="id")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--max-tokens", type=int, help="tokens per model call (default: the model's context length)")
    ap.add_argument(
        "--overflow",
        choices=OVERFLOW,
        default="error",
        help="longer documents: an error row (default), truncated, or scored in consecutive windows",
    )
    ap.add_argument("--actors", type=int, default=1, help="Ray actors, each holding one session")
    ap.add_argument("--cpus-per-actor", type=int, default=1, help="CPUs Ray reserves per actor (= its ORT threads)")
    ap.add_argument("--batch-size", type=int, default=4, help="documents per Ray task")
    ap.add_argument("--address", help="Ray cluster address ('auto', host:port); default: start Ray locally")
    ap.add_argument(
        "--actor-resources",
        type=_json_object,
        help="custom Ray resources each actor needs, as JSON, e.g. '{\"batch\": 1}' (nodes started with them)",
    )
    ap.add_argument(
        "--runtime-env",
        type=_json_object,
        help='Ray runtime_env as JSON, e.g. \'{"py_modules": ["iceformer-0.1.0-...whl"]}\' (see docs/batch.md)',
    )
    ap.add_argument("--shard-rows", type=int, default=SHARD_ROWS, help="result rows per Parquet shard")
    ap.add_argument("--summary", help="also write the run's summary here as JSON")
    ap.add_argument("--serial", action="store_true", help="no Ray: the same scorer in this process")
    ap.add_argument("--limit", type=int, help="the first N documents only")
    args = ap.parse_args(argv)
    console = Console(stderr=True)
    opts = BatchOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BatchOptions)})
    try:
        s = run_batch(opts)
    except BatchError as e:
        console.print(f"ice-batch: {e}", style="red", markup=False, highlight=False, soft_wrap=True)
        return 2
    table = Table(title=f"{args.input} -> {args.output}")
    for col in ["documents", "skipped (done before)", "error rows", "tokens", "seconds", "documents/s", "tokens/s"]:
        table.add_column(col, justify="right")
    table.add_row(
        str(s.documents),
        str(s.skipped),
        str(s.errors),
        str(s.tokens),
        f"{s.seconds:.1f}",
        f"{s.documents_per_second:.2f}",
        f"{s.tokens_per_second:.0f}",
    )
    console.print(table)
    console.print(f"tokenizer: {s.tokenizer}", markup=False, highlight=False, soft_wrap=True)
    for name in s.set_aside:
        console.print(f"unreadable shard set aside and its documents re-run: {name}", markup=False)
    if s.workers:
        console.print(_workers_table(s))
    if s.retried:
        console.print(
            f"retried after their actor or node was lost: {len(s.retried)} documents ({', '.join(s.retried[:8])}"
            f"{', ...' if len(s.retried) > 8 else ''})",
            markup=False,
        )
    if args.summary:
        fields = dataclasses.asdict(s) | {"documents_per_second": s.documents_per_second}
        Path(args.summary).write_text(json.dumps(fields, indent=1))
    return 0


def _workers_table(s) -> Table:
    table = Table(title="workers")
    for col in ["node", "host", "pid", "SIMD tier", "restarted", "batches", "documents"]:
        table.add_column(col)
    for w in s.workers:
        node = w.node[:12]
        table.add_row(node, w.host, str(w.pid), w.simd, "yes" if w.restarted else "", str(w.batches), str(w.documents))
    return table


if __name__ == "__main__":
    sys.exit(main())
