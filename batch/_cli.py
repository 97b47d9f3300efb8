"""ice-batch: run a (rewritten) model over a corpus of documents on Ray Data, one result row per document,
written as Parquet shards with the document id. Re-running with the same output folder skips the documents
already there (resume).

  ice-batch docs.jsonl results/ --model smollm2.knn.onnx --tokenizer smollm2 --actors 2 [--overflow window]
  ice-batch docs.parquet results/ --model genai-folder/ --address auto      # an existing Ray cluster
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from ._job import BatchOptions, run_batch
from ._model import BatchError
from ._scorer import OVERFLOW


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
    ap.add_argument("--serial", action="store_true", help="no Ray: the same scorer in this process")
    ap.add_argument("--limit", type=int, help="the first N documents only")
    args = ap.parse_args(argv)
    console = Console(stderr=True)
    opts = BatchOptions(
        args.input,
        args.output,
        args.model,
        args.tokenizer,
        args.id_column,
        args.text_column,
        args.max_tokens,
        args.overflow,
        args.actors,
        args.cpus_per_actor,
        args.batch_size,
        args.address,
        args.serial,
        args.limit,
    )
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
