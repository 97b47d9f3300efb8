"""ice-rewrite on onnxruntime-genai models (tiny random-weight decoders in the builder's form, genai_tiny.py): the
rewritten folder generates exactly the original's greedy tokens with k-NN off; folder handling and refusals."""

import json

import numpy as np
import onnx
import pytest
from iceformer.ops import contract
from iceformer.rewriter import RewriteError, RewriteOptions, rewrite
from iceformer.rewriter._cli import main as cli

from tests.support import genai_tiny

og = pytest.importorskip("onnxruntime_genai")

PROMPTS = {  # prompt lengths around the prefill threshold (32 new tokens) and the exact path's 64-row blocks
    "short": [[1, 5, 7, 9, 11]],
    "31": [list(range(1, 32))],
    "33": [list(range(2, 35))],
    "65": [list(np.arange(65) * 7 % 90 + 3)],
    "batch 40+12": [list(range(3, 43)), list(range(5, 17))],
}


@pytest.fixture(scope="module")
def genai_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("genai")
    return {
        name: genai_tiny.build(root / name, **kw)
        for name, kw in {"plain": {}, "window": {"window": 8}, "interleaved": {"interleaved": 1, "seed": 3}}.items()
    }


@pytest.mark.genai
@pytest.mark.parametrize("model", ["plain", "window", "interleaved"])
def test_rewritten_folder_generates_the_original_tokens(genai_models, tmp_path, model):
    src = genai_models[model]
    out = tmp_path / "rewritten"
    report = rewrite(src, out, RewriteOptions(attributes={"top_k": 0}))
    assert report.replaced_by_form == {"GroupQueryAttention": 2}
    assert (out / "notes.txt").read_text() == (src / "notes.txt").read_text()
    config = json.loads((out / "genai_config.json").read_text())
    assert config["model"]["decoder"]["session_options"]["custom_ops_library"] == "libiceformer_ops.so"
    nodes = [n for n in onnx.load(out / "model.onnx").graph.node if n.op_type == "GroupQueryAttention"]
    assert {n.domain for n in nodes} == {contract.DOMAIN}
    for name, prompts in PROMPTS.items():
        want = genai_tiny.generate(src, prompts, 12)
        got = genai_tiny.generate(out, prompts, 12)
        assert got == want, name


@pytest.mark.genai
def test_defaults_and_knn_attributes_reach_the_nodes(genai_models, tmp_path):
    out = tmp_path / "r"
    assert cli([str(genai_models["plain"]), str(out), "--attr", "min_keys=4096", "--layers", "1"]) == 0
    nodes = [n for n in onnx.load(out / "model.onnx").graph.node if n.op_type == "GroupQueryAttention"]
    assert [n.domain for n in nodes] == ["com.microsoft", contract.DOMAIN]  # --layers 1: the second only
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[1].attribute}
    assert attrs["min_keys"] == 4096 and attrs["do_rotary"] == 1
    assert genai_tiny.generate(out, PROMPTS["65"], 6) == genai_tiny.generate(genai_models["plain"], PROMPTS["65"], 6)
    # The rest of the folder; then nothing is left: exit 3, nothing written.
    assert cli([str(out), str(tmp_path / "r2")]) == 0
    assert cli([str(tmp_path / "r2"), str(tmp_path / "r3")]) == 3 and not (tmp_path / "r3").exists()


def test_per_head_lists_must_have_one_value_per_query_head(genai_models, tmp_path):
    """The tiny folder has 4 query heads: a list of 3 is refused at rewrite time (nothing written), 4 reach the nodes."""
    src, bad, good = genai_models["plain"], tmp_path / "bad", tmp_path / "good"
    with pytest.raises(RewriteError, match=r"head_budgets has 3 values, expected one per query head \(Hq = 4\)"):
        rewrite(src, bad, RewriteOptions(attributes={"head_budgets": [8, 8, 8]}))
    assert not bad.exists()
    assert cli([str(src), str(good), "--attr", "head_budgets=8,0,16,8", "--attr", "head_tail_samples=4,4,4,4"]) == 0
    nodes = [n for n in onnx.load(good / "model.onnx").graph.node if n.op_type == "GroupQueryAttention"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["head_budgets"] == [8, 0, 16, 8] and attrs["head_tail_samples"] == [4, 4, 4, 4]


def test_folder_refusals_leave_nothing_behind(genai_models, tmp_path):
    src = genai_models["plain"]
    before = sorted(p.name for p in src.iterdir())
    with pytest.raises(RewriteError, match="never the input|the input path"):
        rewrite(src, src)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep")
    with pytest.raises(RewriteError, match="must be new or empty"):
        rewrite(src, busy)
    assert (busy / "x").read_text() == "keep" and sorted(p.name for p in src.iterdir()) == before
    assert not any(p.name.startswith(".busy") for p in tmp_path.iterdir())


def test_single_model_file_with_gqa_nodes(genai_models, tmp_path):
    """A lone model.onnx with GroupQueryAttention nodes is rewritten too (the caller loads the library)."""
    report = rewrite(genai_models["plain"] / "model.onnx", tmp_path / "m.onnx")
    assert len(report.replaced) == 2 and report.replaced_by_form == {"GroupQueryAttention": 2}
