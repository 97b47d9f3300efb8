"""ice-batch on a local Ray instance: a small corpus of Brown Corpus documents (and bad ones) through rewritten
SmolLM2; results equal the serial run of the same scorer; bad documents become error rows; resume skips what is
written; an actor that dies is replaced and its batch retried; the ONNX tokenizer's ids equal Hugging Face's."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from iceformer.batch import BatchError, BatchOptions, DocumentScorer, read_input, run_batch
from iceformer.batch._cli import main as cli
from iceformer.models import corpus, export_genai

from tests.support.batch import BAD, GOOD, options, results

ray = pytest.importorskip("ray")
# Every test scores documents with rewritten SmolLM2 (real weights, exported once per session: tests/batch/conftest.py).
pytestmark = [pytest.mark.models, pytest.mark.exports]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_error_rows_say_why_and_good_rows_are_scored(serial):
    for doc_id, (_, reason) in BAD.items():
        assert serial[doc_id]["error"].startswith(reason), (doc_id, serial[doc_id]["error"])
        assert serial[doc_id]["perplexity"] is None
    good = [serial[f"doc{i}"] for i in range(GOOD)]
    assert all(r["error"] is None and r["windows"] == 1 and r["scored"] == r["tokens"] - 1 for r in good)
    assert all(5 < r["perplexity"] < 500 for r in good)  # Brown text under a 135M model


@pytest.mark.ray
def test_ray_with_two_actors_equals_the_serial_run(serial, docs, model, tmp_path, local_ray):
    summary = run_batch(options(docs, model, tmp_path / "out", actors=2))
    assert (summary.documents, summary.errors) == (GOOD + len(BAD), len(BAD))
    assert summary.tokens == sum(r["tokens"] for r in serial.values())
    assert results(tmp_path / "out") == serial  # same session settings per document: the same bits


@pytest.mark.ray
def test_resume_runs_only_what_is_missing(serial, docs, model, tmp_path, local_ray):
    out = tmp_path / "out"
    first = run_batch(options(docs, model, out, actors=2, limit=7))
    assert first.documents == 7
    (out / "killed-mid-write.parquet").write_bytes(b"PAR1 truncated")  # what a killed writer could leave
    (out / ".ray-0123.parquet.tmp").write_bytes(b"PAR1")  # and what ours could: a hidden temporary file
    second = run_batch(options(docs, model, out, actors=2))
    assert (second.skipped, second.documents) == (7, GOOD + len(BAD) - 7)
    assert second.set_aside == ["killed-mid-write.parquet"] and (out / "_incomplete.killed-mid-write.parquet").exists()
    assert not (out / ".ray-0123.parquet.tmp").exists()
    assert results(out) == serial  # every document exactly once
    third = run_batch(options(docs, model, out, actors=2))
    assert (third.skipped, third.documents, third.shards) == (GOOD + len(BAD), 0, [])


class CrashOnce(DocumentScorer):
    """Kills its actor process the first time it meets doc4 (a marker file remembers): Ray must restart the actor
    and retry the batch."""

    marker: str = ""

    def __call__(self, batch):
        if "doc4" in list(batch["id"]) and not os.path.exists(self.marker):
            Path(self.marker).write_text("crashed")
            os._exit(1)
        return super().__call__(batch)


@pytest.mark.ray
def test_a_dead_actor_is_replaced_and_its_batch_retried(serial, docs, model, tmp_path, local_ray):
    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    CrashOnce.marker = str(tmp_path / "crashed")
    summary = run_batch(options(docs, model, tmp_path / "out", actors=2), scorer=CrashOnce)
    assert Path(CrashOnce.marker).read_text() == "crashed"
    assert summary.documents == GOOD + len(BAD)
    assert results(tmp_path / "out") == serial
    batch = next(b for b in ([f"doc{i}" for i in range(j, j + 3)] for j in range(0, GOOD, 3)) if "doc4" in b)
    assert summary.retried == sorted(batch)  # the batch that killed its actor, started twice; nothing else
    assert sum(w.restarted for w in summary.workers) == 1
    assert sum(w.documents for w in summary.workers) == GOOD + len(BAD)  # finished batches: the lost one is not


def test_output_on_a_pyarrow_filesystem_uri_and_resume_there(serial, docs, model, tmp_path):
    uri = (tmp_path / "out").as_uri()  # file:///...: the same code path as s3:// or gs://
    first = run_batch(options(docs, model, uri, serial=True, limit=5, shard_rows=2))
    assert (first.documents, len(first.shards)) == (5, 2)  # a shard once 2 rows wait: batches of 3, then 2
    second = run_batch(options(docs, model, uri, serial=True))
    assert (second.skipped, second.documents) == (5, GOOD + len(BAD) - 5)
    assert results(tmp_path / "out") == serial
    with pytest.raises(BatchError, match="cannot open the output folder"):
        run_batch(options(docs, model, "nosuchscheme://x/y", serial=True))


def test_windows_and_truncation(docs, model, tmp_path):
    win = run_batch(options(docs, model, tmp_path / "w", serial=True, overflow="window", max_tokens=64))
    cut = run_batch(options(docs, model, tmp_path / "t", serial=True, overflow="truncate", max_tokens=64))
    w, t = results(tmp_path / "w"), results(tmp_path / "t")
    long = w["too-long"]
    assert long["error"] is None and long["tokens"] == 400 and long["windows"] == 7  # ceil(400 / 64)
    assert long["scored"] == 400 - 7  # each window predicts all but its first token
    assert t["too-long"]["tokens"] == 400 and t["too-long"]["scored"] == 63 and t["too-long"]["windows"] == 1
    short = next(k for k in w if k.startswith("doc") and w[k]["tokens"] <= 64)
    assert w[short]["perplexity"] == t[short]["perplexity"]  # documents that fit are untouched by either
    assert win.errors == cut.errors == len(BAD) - 1


def test_cli_and_refusals(docs, model, tmp_path, capsys):
    assert (
        cli(
            [
                str(docs),
                str(tmp_path / "o"),
                "--model",
                str(model),
                "--tokenizer",
                "smollm2",
                "--serial",
                "--max-tokens",
                "320",
                "--limit",
                "3",
            ]
        )
        == 0
    )
    assert len(pq.read_table(tmp_path / "o")) == 3
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n')
    with pytest.raises(BatchError, match="has duplicates"):
        read_input(str(dup), "id", "text")
    assert cli([str(dup), str(tmp_path / "o2"), "--model", str(model), "--tokenizer", "smollm2", "--serial"]) == 2
    assert cli([str(docs), str(tmp_path / "o3"), "--model", str(tmp_path), "--serial"]) == 2  # no genai_config
    genai = export_genai("smollm2", max_length=4096)  # ice-export's genai form: last-position logits only
    with pytest.raises(BatchError, match=r"its logits are \[B, 1, V\], the last position only"):
        run_batch(options(docs, genai, tmp_path / "o5", serial=True))
    (tmp_path / "genai_config.json").write_text('{"model": {}}')
    with pytest.raises(BatchError, match="not a genai config with model.decoder.filename"):
        run_batch(options(docs, tmp_path, tmp_path / "o4", serial=True))
    assert "ice-batch:" in capsys.readouterr().err


def test_onnx_tokenizer_ids_equal_hugging_face_on_the_corpus(serial):
    """build_spec checked the ONNX tokenizer on the first documents; here on 40 whole Brown samples."""
    from iceformer.batch import Tokenizer, build_spec
    from iceformer.models.export import decoder

    hf = decoder("smollm2").tokenizer()
    texts = [corpus.brown_text(start=10 * i, count=1) for i in range(40)]
    spec = build_spec(hf, decoder("smollm2").hf_dir(), texts[:2])
    ours = Tokenizer(spec)
    assert spec.onnx_model is not None
    assert [ours(t) for t in texts] == [hf(t).input_ids for t in texts]


def test_serial_mode_matches_the_scorer_called_directly(serial, docs, model):
    """The job's plumbing adds nothing: one document through DocumentScorer alone gives the same row."""
    from iceformer.batch import ScoreOptions, inspect
    from iceformer.batch._job import _tokenizer_spec

    table = read_input(str(docs), "id", "text")
    spec = inspect(model)
    tok = _tokenizer_spec(
        BatchOptions(str(docs), "", str(model), "smollm2"),
        spec,
        [t for t in table["text"].to_pylist()[:16] if t is not None],
    )
    row = DocumentScorer(spec, tok, ScoreOptions(320, "error", 2)).score_text(table["text"][2].as_py())
    assert row["perplexity"] == serial["doc2"]["perplexity"] and row["nll"] == serial["doc2"]["nll"]
    assert np.isfinite(row["perplexity"])
