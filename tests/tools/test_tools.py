"""tools/: the benchmark and the k-NN evaluation run end to end on small inputs and report what they claim."""

import json
from pathlib import Path

import iceformer.tools
import numpy as np
from iceformer.ops.cases import AttentionCase
from iceformer.tools import bench_op, eval_knn

FIXTURE = Path(iceformer.tools.__file__).resolve().parent / "data" / "smollm2_qkv_2048.npz"


def test_bench_op_writes_rows_and_plot(tmp_path):
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    bench_op.main(
        [
            "--n",
            "256",
            "--reps",
            "1",
            "--heads",
            "2",
            "--causal",
            "yes",
            "--layouts",
            "mha",
            "--knn",
            '{"min_keys": 0, "top_k": 16, "max_candidates": 32, "tail_samples": 0}',
            "--knn",
            '{"top_k": 0}',
            "--decode",
            "700",
            "--decode-steps",
            "2",
            "--decode-layers",
            "2",
            "--json",
            str(out),
            "--plot",
            str(png),
        ]
    )
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert len(rows) == 1 and rows[0]["n"] == 256 and rows[0]["causal"] == 1
    assert set(rows[0]["times_ms"]) == {"ours-exact", "ours-knn", "ours-knn-2", "ort-gqa", "ort-mha", "ort-attn23"}
    assert rows[0]["errors"]["ours-knn-2"] == [0.0, 0.0]  # top_k 0 is the exact path: bit-identical
    assert rows[0]["errors"]["ours-knn"][0] <= rows[0]["errors"]["ours-knn"][1]  # the mean within the worst head
    (dec,) = result["decode"]
    assert (dec["past"], dec["layers"], dec["steps"]) == (700, 2, 2)
    assert set(dec["times_ms"]) == {"ours-knn", "ours-exact", "ort-gqa"}
    assert 0.0 <= dec["errors"]["ours-knn"][0] <= dec["errors"]["ours-knn"][1]  # the mean within the worst step
    assert rows[0]["knn_stats"]["path"] == "knn" and 0.0 <= rows[0]["recall"] <= 1.0
    assert png.stat().st_size > 10_000


def test_eval_knn_on_the_shipped_capture(tmp_path):
    out = tmp_path / "e.json"
    eval_knn.main([str(FIXTURE), "--layers", "13", "--reps", "1", "--attrs", '{"min_keys": 0}', "--json", str(out)])
    (res,) = json.loads(out.read_text())["results"]
    (layer,) = res["layers"]
    assert layer["layer"] == 13
    assert layer["recall"] >= 0.95 and layer["rel_err"] < 0.02  # measured 0.98 / 0.004


def test_case_inputs_are_seeded_and_shaped():
    c = AttentionCase(B=2, Hq=4, Hkv=2, S=5, T=7, D=8, Dv=3, attn_mask="bool", key_padding_mask="int64", clusters=4)
    a, b = c.inputs(), c.inputs()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["Q"].shape == (2, 4, 5, 8) and a["K"].shape == (2, 2, 7, 8) and a["V"].shape == (2, 2, 7, 3)
    assert a["attn_mask"].shape == (2, 1, 5, 7) and a["key_padding_mask"].dtype == np.int64
