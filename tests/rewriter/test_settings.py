"""Per-core settings on a rewritten model (rewriter.apply_settings), and ice-calibrate end to end on the tiny GQA
LLaMA export (its choices on real errors: tests/tools/test_calibrate.py)."""

import hashlib

import numpy as np
import onnx
import pytest
from iceformer.rewriter import (
    RewriteError,
    RewriteOptions,
    apply_settings,
    knn_cores,
    rewrite,
)
from iceformer.tools import calibrate as cal

# Small sets, from the first keys.
SPARSE = {"top_k": 4, "max_candidates": 4, "local_window": 4, "num_sink": 1, "min_keys": 0, "tail_samples": 16}


def _attrs(path, i):
    node = [n for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "KnnAttention"][i]
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def rewritten(exported, tmp_path_factory):
    path = tmp_path_factory.mktemp("settings") / "llama.knn.onnx"
    rewrite(exported["llama_gqa"][0], path, RewriteOptions(attributes=SPARSE))
    return path


def test_settings_are_written_per_core_and_nothing_else_changes(rewritten, tmp_path):
    before = _sha(rewritten)
    out = tmp_path / "set.onnx"
    assert apply_settings(rewritten, out, {0: {"top_k": 0}, 1: {"tail_samples": 512, "tail_limit": 0.15}}) == 2
    assert _sha(rewritten) == before  # the input is never touched
    a0, a1 = _attrs(out, 0), _attrs(out, 1)
    assert a0["top_k"] == 0 and a0["tail_samples"] == 16
    assert a1["top_k"] == 4 and a1["tail_samples"] == 512 and a1["tail_limit"] == pytest.approx(0.15)
    base0 = _attrs(rewritten, 0)
    assert {k: v for k, v in a0.items() if k != "top_k"} == {k: v for k, v in base0.items() if k != "top_k"}


@pytest.mark.parametrize(
    "per_core, message",
    [
        ({2: {"top_k": 0}}, r"cores \[2\] do not exist \(the model has 2\)"),
        ({0: {"topk": 3}}, "topk"),  # not a contract attribute
    ],
)
def test_bad_settings_are_refused_and_nothing_is_written(rewritten, tmp_path, per_core, message):
    out = tmp_path / "bad.onnx"
    with pytest.raises(RewriteError, match=message):
        apply_settings(rewritten, out, per_core)
    assert list(tmp_path.iterdir()) == []


def test_settings_refuse_the_input_path_and_a_model_without_cores(rewritten, exported, tmp_path):
    with pytest.raises(RewriteError, match="refusing to overwrite the input"):
        apply_settings(rewritten, rewritten, {0: {"top_k": 0}})
    with pytest.raises(RewriteError, match="no iceformer.KnnAttention or iceformer.GroupQueryAttention node"):
        apply_settings(exported["llama_gqa"][0], tmp_path / "x.onnx", {0: {"top_k": 0}})
    assert len(knn_cores(__import__("onnx_ir").load(rewritten))) == 2


def test_calibration_writes_the_fastest_setting_within_budget(rewritten, tmp_path):
    """The core's inputs are captured from the model run, every candidate is tried, and the output model carries
    per core the fastest candidate within budget that beats exact (or top_k 0)."""
    ids = list(np.random.default_rng(1).integers(0, 100, 400))
    report = cal.calibrate(rewritten, tmp_path / "cal.onnx", ids, budget=0.99, threads=1)
    for r in report.cores:
        fits = [t for t in r.trials if t.error <= 0.99 and t.ms < r.exact_ms]
        if fits:
            best = min(fits, key=lambda t: t.ms)
            assert r.chosen == best.attrs and r.ms == best.ms
        else:
            assert r.chosen == {"top_k": 0}
        written = _attrs(tmp_path / "cal.onnx", r.core)
        assert all(written[k] == pytest.approx(v) for k, v in r.chosen.items())
