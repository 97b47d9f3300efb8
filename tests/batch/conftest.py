"""Fixtures of the ice-batch tests: rewritten SmolLM2 (real weights, exported once per session), the corpus, and
the serial run of it (the reference every Ray run is compared to)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from iceformer.batch import run_batch
from iceformer.models import export_smollm2
from iceformer.rewriter import rewrite

from tests.support.batch import BAD, DOCUMENTS, options, results, write_docs


@pytest.fixture(scope="session")
def model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("batch-model")
    src = export_smollm2()
    rewrite(src, out / "smollm2.knn.onnx")
    os.symlink(src.parent / "lm_head.npy", out / "lm_head.npy")
    return out / "smollm2.knn.onnx"


@pytest.fixture(scope="session")
def docs(tmp_path_factory) -> Path:
    return write_docs(tmp_path_factory.mktemp("batch-docs") / "docs.jsonl")


@pytest.fixture(scope="session")
def serial(docs, model, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("serial")
    summary = run_batch(options(docs, model, out, serial=True, cpus_per_actor=1))  # the Ray actors: 1 CPU each
    assert (summary.documents, summary.errors, summary.skipped) == (DOCUMENTS, len(BAD), 0)
    assert summary.tokenizer.startswith("ONNX tokenizer (onnxruntime-extensions): ids equal Hugging Face's")
    assert [(w.node, w.batches, w.documents, w.restarted) for w in summary.workers] == [("local", 6, DOCUMENTS, False)]
    assert summary.retried == []
    return results(out)
