"""Long-document batch inference on Ray: a rewritten model over a corpus, one result row per document.

    from iceformer.batch import BatchOptions, run_batch
    summary = run_batch(BatchOptions(input="docs.jsonl", output="results/", model="smollm2.knn.onnx",
                                     tokenizer="smollm2", actors=2))

CLI: `ice-batch`. See the README section "Batch inference on Ray".
"""

from ._job import BatchOptions, BatchSummary, read_input, run_batch
from ._model import BatchError, DocumentError, inspect
from ._scorer import DocumentScorer, ScoreOptions
from ._tokenizer import Tokenizer, build_spec

__all__ = [
    "BatchOptions",
    "BatchSummary",
    "BatchError",
    "DocumentError",
    "DocumentScorer",
    "ScoreOptions",
    "Tokenizer",
    "build_spec",
    "inspect",
    "read_input",
    "run_batch",
]
