"""tools/: ice-eval's building blocks (perplexity, the memory probe) and
ice-eval itself on MiniLM (real weights, slow)."""

import json

import numpy as np
import pytest
from iceformer.ops import make_knn_attention_model
from iceformer.tools import eval as ice_eval

from iceformer import metrics
from iceformer.metrics import peak_rss_mib


def test_perplexity_of_a_known_distribution():
    lm_head = np.eye(4, dtype=np.float32)
    hidden = np.log(np.full((3, 4), 0.25, np.float32))  # uniform over 4 tokens: perplexity 4
    ppl, preds = metrics.perplexity(hidden, lm_head, [0, 1, 2], 0)
    assert ppl == pytest.approx(4.0, rel=1e-5) and preds.shape == (2,)


def test_memory_probe_runs_in_a_child_and_reports_failure(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(make_knn_attention_model().SerializeToString())
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((1, 2, 64, 16)).astype(np.float32) for n in ("Q", "K", "V")}
    assert 20 < peak_rss_mib(str(path), feeds, 1) < 4096
    with pytest.raises(RuntimeError, match="exited with code"):
        peak_rss_mib(str(tmp_path / "missing.onnx"), feeds, 1)


@pytest.mark.slow
@pytest.mark.models
@pytest.mark.exports
def test_ice_eval_minilm_writes_json_and_cosines(tmp_path):
    assert ice_eval.main(["--tokens", "--minilm", "--attrs", '{"min_keys": 0}', "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert [r["model"] for r in result["minilm"]] == ["fp32 (dynamo export)", "int8 (third-party file)"]
    assert all(r["cos_min"] >= 0.9999 and r["tokens"] == 512 for r in result["minilm"])
