"""The coverage corpus (tests/support/corpus.py): every tiny model x exporter x opset (x ORT's optimizer) has its expected cores
replaced with default options and gives the original's outputs with our library and without it."""

import numpy as np
import pytest

from tests.support.corpus import CASES, LEFT_OUT, NEW, WINDOW, Case, _valid, check


@pytest.mark.corpus
@pytest.mark.exports
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_corpus_case(case, tmp_path):
    results = check(case, tmp_path)
    assert [(r.file, r.replaced) for r in results] == [(r.file, r.expected) for r in results], [
        r.detail for r in results
    ]
    assert all(r.equal for r in results), [(r.file, r.detail) for r in results if not r.equal]


def test_corpus_shape():
    """Every model through every exporter that can write it, each of its opsets, and the stated exclusions only."""
    assert NEW > 4 * WINDOW
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    by_exporter = {e: {c.kind for c in CASES if c.exporter == e and not c.optimizer} for e in ("dynamo", "optimum")}
    assert by_exporter["dynamo"] == {"bert", "gpt2", "llama", "qwen3", "qwen2_window", "mistral", "gemma3", "t5"}
    assert len(by_exporter["optimum"]) == 9
    assert {c.opset for c in CASES if c.exporter == "dynamo"} == set(range(18, 25))
    assert {c.opset for c in CASES if c.exporter == "torchscript"} == set(range(14, 21))
    assert sum(len(kinds) for kinds, _, _ in LEFT_OUT) == 14
    assert Case("bart", "optimum-past", 18).expected() == {
        "encoder_model.onnx": 2,
        "decoder_model.onnx": 4,
        "decoder_with_past_model.onnx": 4,
        "decoder_model_merged.onnx": 8,
    }


def test_padded_rows_and_keys_are_the_only_entries_ignored():
    """The comparison ignores exactly the padded query rows and padded keys, nothing else."""
    mask = np.ones((3, NEW), np.int64)
    mask[1, :2] = 0
    rows = np.ones((3, NEW, 4))
    assert _valid(rows, mask).sum() == (3 * NEW - 2) * 4
    presents = np.ones((3, 2, NEW, 4))
    assert _valid(presents, mask).sum() == (3 * NEW - 2) * 2 * 4
    assert _valid(np.ones((5, 7)), mask).sum() == 35  # not batch-aligned: compared whole
