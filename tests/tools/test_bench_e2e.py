"""ice-bench-e2e: the summary a reader sees (medians, speedup against the fastest peer with the same weights,
retrieval counts, agreement) from known records; and the worker protocol on a one-node model."""

import sys

import numpy as np
from iceformer.ops import get_library_path, make_knn_attention_model
from iceformer.tools import bench_e2e
from iceformer.tools.bench_e2e import Record
from iceformer.tools.e2e_worker import Worker


def _records():
    R = Record
    return [
        R(4096, "ours-exact", "passkey@0.10", 20.0, 2000, True),
        R(4096, "ours-exact", "passkey@0.50", 22.0, 2100, True),
        R(4096, "ours-knn", "passkey@0.10", 10.0, 1900, True, 0.001, 0.99, True),
        R(4096, "ours-knn", "passkey@0.50", 12.0, 1950, False, 0.003, 0.97, False),
        R(
            4096,
            "genai",
            "passkey@0.10",
            30.0,
            2500,
            True,
            None,
            None,
            True,
            decode_tok_s=20.0,
            decode_ms=50.0,
            decode_p90_ms=60.0,
        ),
        R(
            4096,
            "genai",
            "passkey@0.50",
            34.0,
            2600,
            True,
            None,
            None,
            True,
            decode_tok_s=24.0,
            decode_ms=40.0,
            decode_p90_ms=44.0,
        ),
        R(4096, "ov-xattention", "passkey@0.10", 24.0, 3000, False, None, None, False),
        R(4096, "ov-xattention", "passkey@0.50", 20.0, 3100, True, None, None, True),
        R(4096, "genai-int4", "passkey@0.10", 15.0, 900, True),
        R(4096, "genai-int4-ours", "passkey@0.10", 5.0, 800, True, decode_ms=10.0, same_as_peer=True),
        R(4096, "ov-int8-dense", "passkey@0.10", None, None, None, error="killed"),
    ]


def test_summary_medians_speedups_and_counts():
    rows, best = bench_e2e.summary(_records(), 4096)
    assert best == {"fp32": "ov-xattention", "int4": "genai-int4"}  # ours never counts as a peer
    by = {r[0]: r for r in rows}
    assert by["ours-knn"][1:8] == ["11.00", "2.00x", "1950", "1/2", "+0.20%", "98.00%", "1/2"]
    assert by["ours-exact"][2] == "1.05x" and by["genai"][2] == "0.69x"
    assert by["genai"][8] == "22.0" and by["ours-knn"][8] == "-"  # decode: generating runtimes only, median
    assert by["genai"][9] == "45.0 (52.0)" and by["genai-int4-ours"][9] == "10.0"  # ms/token (p90 where known)
    assert by["genai-int4-ours"][10] == "1/1" and by["genai"][10] == "-"  # tokens against the peer's
    assert by["genai-int4-ours"][2] == "3.00x"  # against the int4 peer, not the fp32 one
    assert by["ov-int8-dense"][1:5] == ["-", "-", "-", "0/1"]  # the failed run is counted, not timed
    md = bench_e2e.markdown(_records())
    assert md.splitlines()[0].startswith("| tokens | runtime |") and "| 4096 | ours-knn | 11.00 | 2.00x |" in md


def test_worker_runs_an_onnx_model_and_reports_its_peak(tmp_path):
    """A decoder-shaped stand-in is not needed: the onnx worker feeds input_ids / attention_mask, so a model
    with those inputs is enough; here a wrong model gives the error answer and the worker stays up."""
    path = tmp_path / "knn.onnx"
    path.write_bytes(make_knn_attention_model(is_causal=1).SerializeToString())
    w = Worker(sys.executable, "onnx", {"threads": 1, "model": str(path), "library": str(get_library_path())})
    try:
        ans = w([1, 2, 3])
        assert "error" in ans and "input_ids" in ans["error"] and ans["peak_rss_mib"] > 0
        ans = w([1, 2, 3])  # still answering
        assert "error" in ans
    finally:
        w.close()
    assert np.isfinite(ans["peak_rss_mib"])


def test_scored_texts_fill_their_column_and_nothing_else():
    """--score-tokens records: the decode perplexity column (mean perplexity, change against the peer, agreement);
    they count in no retrieval, timing or memory cell."""
    R = Record
    recs = _records() + [
        R(4096, "genai-int4", "text+256", decode_ppl=10.0),
        R(4096, "genai-int4-ours", "text+256", decode_ppl=10.1, decode_ppl_change=0.01, decode_agreement=0.98),
        R(4096, "genai", "text+256", error="killed"),
    ]
    rows, _ = bench_e2e.summary(recs, 4096)
    by = {r[0]: r for r in rows}
    assert by["genai-int4-ours"][11] == "10.100 (+1.00%, 98.0%)" and by["genai-int4"][11] == "10.000"
    assert by["genai"][11] == "-" and by["ours-knn"][11] == "-"
    base = {r[0]: r for r in bench_e2e.summary(_records(), 4096)[0]}
    assert all(by[rt][:11] == base[rt][:11] for rt in base)


def test_a_run_that_only_scores_reports_its_runtimes(tmp_path):
    """--score-tokens without prompts: a row per scoring runtime (only its decode perplexity cell filled) and no plot
    (no time to first token to draw); measured, the plot raised on the empty log axes."""
    recs = [
        Record(16384, "genai", "text+256", decode_ppl=36.649),
        Record(16384, "genai-ours", "text+256", decode_ppl=36.717, decode_ppl_change=0.00186, decode_agreement=0.95),
    ]
    rows, best = bench_e2e.summary(recs, 16384)
    assert [r[0] for r in rows] == ["genai", "genai-ours"] and best == {}
    assert rows[1][11] == "36.717 (+0.19%, 95.0%)" and set(rows[1][1:11]) == {"-"}
    bench_e2e._plot(recs, tmp_path / "e2e.png", None)
    assert not (tmp_path / "e2e.png").exists()
