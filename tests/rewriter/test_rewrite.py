"""ice-rewrite on real exporter output: counts, exactness with and without the library, the CLI's errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from iceformer.ops import contract, simd_variant
from iceformer.rewriter import AlreadyRewritten, RewriteError, RewriteOptions, rewrite
from iceformer.rewriter._cli import main as cli

import iceformer
from tests.support.tiny_models import MODELS, SLIDING


def _feeds(seq=24):
    rng = np.random.default_rng(0)
    mask = np.ones((2, seq), np.int64)
    mask[1, seq - 5 :] = 0  # right padding in the second row
    return {"input_ids": rng.integers(0, 100, (2, seq)), "attention_mask": mask}


@pytest.mark.parametrize("bypass", [True, False], ids=["mask-bypass", "mask-kept"])
@pytest.mark.parametrize("name", list(MODELS))
def test_rewrite_replaces_every_core_and_stays_exact(exported, tmp_path, name, bypass):
    src, cores = exported[name]
    out = tmp_path / "rewritten.onnx"
    report = rewrite(src, out, RewriteOptions(attributes={"top_k": 0}, mask_bypass=bypass))
    assert len(report.replaced) == cores
    assert report.softmax_unmatched == 0 or name == "llama_attention23"
    model = onnx.load(out)
    onnx.checker.check_model(model)
    knn = [n for n in model.graph.node if n.domain == contract.DOMAIN]
    assert len(knn) == cores and all(n.op_type == contract.OP_TYPE for n in knn)
    assert {o.domain: o.version for o in model.opset_import}[contract.DOMAIN] == contract.VERSION
    assert [f.name for f in model.functions] == [contract.OP_TYPE]
    original = onnx.load(src, load_external_data=False)
    assert [i.name for i in model.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in model.graph.output] == [o.name for o in original.graph.output]

    feeds = _feeds(40)
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    with_lib = ort.InferenceSession(str(out), iceformer.session_options(2), providers=["CPUExecutionProvider"])
    without = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(with_lib.run(None, feeds)[0], want, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(without.run(None, feeds)[0], want, atol=2e-5, rtol=1e-4)


def test_gqa_head_repetition_is_stripped(exported, tmp_path):
    report = rewrite(exported["llama_gqa"][0], tmp_path / "o.onnx")
    assert all(r.gqa_stripped for r in report.replaced)
    model = onnx.load(tmp_path / "o.onnx")
    assert not any(n.op_type == "Expand" and "repeat" in n.name for n in model.graph.node)


def test_gpt2_boolean_causal_mask_is_folded(exported, tmp_path):
    report = rewrite(exported["gpt2"][0], tmp_path / "o.onnx")
    assert {r.mask for r in report.replaced} == {"boolean+additive"}


def test_cli_writes_report_and_refuses_its_input(exported, tmp_path, capsys):
    src = exported["bert"][0]
    before = src.read_bytes()
    assert cli([str(src), str(src)]) == 2
    assert src.read_bytes() == before
    out = tmp_path / "bert.knn.onnx"
    assert cli([str(src), str(out), "--top-k", "16", "--attr", "min_keys=0", "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["replaced_by_form"] == {"DecomposedSdpa": 2}
    assert report["simd_tier"] == simd_variant()
    node = next(n for n in onnx.load(out).graph.node if n.op_type == contract.OP_TYPE)
    got = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert got["top_k"] == 16 and got["min_keys"] == 0


@pytest.mark.parametrize("tier, warned", [("scalar", True), ("auto", False)])
def test_cli_names_the_simd_tier_and_warns_when_it_is_the_scalar_reference(exported, tier, warned):
    """Dispatch is per process: ICEFORMER_SIMD=scalar stands in for a CPU with no vectorised tier."""
    code = f"from iceformer.rewriter._cli import main; main([{str(exported['gpt2'][0])!r}, '--dry-run'])"
    res = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, ICEFORMER_SIMD=tier), capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    name = "scalar" if tier == "scalar" else simd_variant()
    assert f"op library SIMD tier on this machine: {name}" in res.stderr
    assert ("runs its scalar reference here" in res.stderr) == warned


def test_cli_dry_run_writes_nothing(exported, tmp_path):
    out = tmp_path / "never.onnx"
    assert cli([str(exported["gpt2"][0]), str(out), "--dry-run"]) == 0
    assert not out.exists()


def _bad_input(kind: str, src: Path, bert: Path) -> None:
    """Writes the bad input `kind` at src (the weights, where there are any, external as exporters write them)."""
    if kind == "empty":
        src.write_bytes(b"")
    elif kind == "random bytes":
        src.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "truncated":
        src.write_bytes(bert.read_bytes()[: len(bert.read_bytes()) // 3])
    elif kind == "no graph":
        onnx.save(onnx.ModelProto(ir_version=10), src)
    else:
        model = onnx.load(bert)
        big = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
        if kind == "huge declared dims":  # a forged shape over the real bytes
            small = min(
                (
                    t
                    for t in model.graph.initializer
                    if t.HasField("raw_data") and t.data_type == onnx.TensorProto.FLOAT
                ),
                key=lambda t: len(t.raw_data),
            )  # stays inline (under size_threshold)
            del small.dims[:]
            small.dims.extend([1 << 20, 1 << 20])
        onnx.save(model, src, save_as_external_data=True, location=src.name + ".data", size_threshold=1024)
        data = src.parent / (src.name + ".data")
        if kind == "external data missing":
            data.unlink()
        elif kind == "external data truncated":
            os.truncate(data, data.stat().st_size - big.ByteSize() // 2)


@pytest.mark.parametrize(
    "kind,message",
    [
        ("missing", "no such file"),
        ("empty", "empty file, not an ONNX model"),
        ("random bytes", "not a readable ONNX model"),
        ("truncated", "not a readable ONNX model"),
        ("no graph", "the model has no graph nodes"),
        ("huge declared dims", r"declares shape 1048576x1048576 \(4398046511104 bytes\) but stores \d+ bytes"),
        (
            "external data missing",
            r"keeps its weights in in.onnx.data, which is missing \(expected at .*in.onnx.data\)",
        ),
        ("external data truncated", r"needs \d+ bytes of in.onnx.data from offset \d+, but the file holds \d+ there"),
    ],
)
def test_bad_inputs_are_reported_and_write_nothing(exported, tmp_path, kind, message):
    src = tmp_path / "in" / "in.onnx"
    src.parent.mkdir()
    if kind != "missing":
        _bad_input(kind, src, exported["bert"][0])
    before = {p.name: p.read_bytes() for p in src.parent.iterdir()}
    out_dir = tmp_path / "out"
    with pytest.raises(RewriteError, match=message):
        rewrite(src, out_dir / "out.onnx")
    assert cli([str(src), str(out_dir / "out.onnx")]) == 2
    assert not out_dir.exists() or not any(out_dir.iterdir())  # no output, no scratch left behind
    assert {p.name: p.read_bytes() for p in src.parent.iterdir()} == before


def test_an_already_rewritten_model_is_reported_and_left_alone(exported, tmp_path, capsys):
    once = tmp_path / "once.onnx"
    rewrite(exported["bert"][0], once)
    before = once.read_bytes()
    with pytest.raises(
        AlreadyRewritten,
        match=r"already rewritten \(2 iceformer.KnnAttention\) and no attention core "
        r"is left to rewrite; nothing written",
    ):
        rewrite(once, tmp_path / "twice.onnx")
    assert cli([str(once), str(tmp_path / "twice.onnx")]) == 3
    assert not (tmp_path / "twice.onnx").exists() and once.read_bytes() == before
    # Part rewritten (--layers): the rest is rewritten, and the report says what was there already.
    part = tmp_path / "part.onnx"
    rewrite(exported["bert"][0], part, RewriteOptions(layers="0"))
    report = rewrite(part, tmp_path / "rest.onnx")
    assert len(report.replaced) == 1 and report.already_ours == {"KnnAttention": 1}
    assert any("already held 1 iceformer.KnnAttention" in n for n in report.notes)


def test_model_without_attention_is_reported(tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    src = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), src)
    with pytest.raises(RewriteError, match="no attention core found"):
        rewrite(src, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_unwritable_output_is_reported(exported, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(RewriteError, match="not writable"):
        rewrite(exported["bert"][0], blocker / "out.onnx")


@pytest.mark.parametrize(
    "name,kind,causal", [("llama_gqa", "padding+causal", 1), ("gpt2", "padding+causal", 1), ("bert", "padding", 0)]
)
def test_hf_masks_are_bypassed(exported, tmp_path, name, kind, causal):
    """The [B,1,S,T] mask built from attention_mask becomes key_padding_mask (+ is_causal): the op is fed the
    model's own 2-D input."""
    out = tmp_path / "o.onnx"
    report = rewrite(exported[name][0], out)
    assert [(r.mask_kind, r.bypassed, r.is_causal) for r in report.replaced] == [(kind, True, causal)] * 2
    node = next(n for n in onnx.load(out).graph.node if n.op_type == contract.OP_TYPE)
    assert node.input[4] == "attention_mask"


def test_bias_cores_are_left_unchanged_by_default(exported_bias, tmp_path):
    with pytest.raises(RewriteError, match="the mask is a bias") as e:
        rewrite(exported_bias, tmp_path / "out.onnx")
    assert str(e.value).count("the mask is a bias") == 2  # one reason per core
    assert not (tmp_path / "out.onnx").exists()


def test_allow_bias_maps_bias_cores_to_exact_only_ops(exported_bias, tmp_path):
    out = tmp_path / "out.onnx"
    report = rewrite(exported_bias, out, RewriteOptions(allow_bias=True))
    assert [(c.layer, c.mask_kind, c.exact_only, c.bypassed) for c in report.replaced] == [
        (0, "bias", True, False),
        (1, "bias", True, False),
    ]
    nodes = [n for n in onnx.load(str(out)).graph.node if n.op_type == contract.OP_TYPE]
    assert [onnx.helper.get_attribute_value(a) for n in nodes for a in n.attribute if a.name == "top_k"] == [0, 0]
    feeds = _feeds()
    so = ort.SessionOptions()
    base = ort.InferenceSession(str(exported_bias), so).run(None, feeds)[0]
    for opts in (iceformer.session_options(2), so):
        got = ort.InferenceSession(str(out), opts).run(None, feeds)[0]
        np.testing.assert_allclose(got, base, atol=2e-5)


def test_layer_selection_leaves_the_other_cores(exported, tmp_path):
    src, cores = exported["llama_gqa"]
    out = tmp_path / "out.onnx"
    report = rewrite(src, out, RewriteOptions(layers="1-"))
    assert [c.layer for c in report.replaced] == [1]
    assert [s.reason for s in report.skipped] == ["core 0 not selected (layers='1-', skip_first=0)"]
    assert report.softmax_unmatched == 1
    report = rewrite(src, out, RewriteOptions(skip_first=1))
    assert [c.layer for c in report.replaced] == [1]
    with pytest.raises(RewriteError, match="no attention core"):
        rewrite(src, out, RewriteOptions(skip_first=2))
    with pytest.raises(RewriteError, match="bad layer spec"):
        rewrite(src, out, RewriteOptions(layers="x-1"))
    feeds = _feeds()
    base = ort.InferenceSession(str(src)).run(None, feeds)[0]
    report = rewrite(src, out, RewriteOptions(layers="0", attributes={"top_k": 0}))
    got = ort.InferenceSession(str(out), iceformer.session_options(2)).run(None, feeds)[0]
    np.testing.assert_allclose(got, base, atol=2e-5)


@pytest.mark.parametrize("mode, causal, bypassed", [("auto", 1, True), ("on", 1, True), ("off", 0, False)])
def test_causal_modes(exported, tmp_path, mode, causal, bypassed):
    src, cores = exported["llama_gqa"]
    out = tmp_path / "out.onnx"
    report = rewrite(src, out, RewriteOptions(causal=mode, attributes={"top_k": 0}))
    assert [(c.is_causal, c.bypassed) for c in report.replaced] == [(causal, bypassed)] * cores
    feeds = _feeds()
    base = ort.InferenceSession(str(src)).run(None, feeds)[0]
    got = ort.InferenceSession(str(out), iceformer.session_options(2)).run(None, feeds)[0]
    np.testing.assert_allclose(got, base, atol=2e-5)  # every mode stays exact on a causal model


def _mha_model(causal: int, with_bias: bool):
    """com.microsoft.MultiHeadAttention (4 heads, head size 16) between two MatMuls, static hidden sizes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32) * 0.2, f"w{i}") for i in range(3)]
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [n]) for i, n in enumerate(("q", "k", "v"))]
    ins = ["q", "k", "v", "", "", "bias"] if with_bias else ["q", "k", "v"]
    nodes.append(
        helper.make_node(
            "MultiHeadAttention", ins, ["y"], domain="com.microsoft", num_heads=4, unidirectional=causal, name="mha"
        )
    )
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 64])]
    if with_bias:
        inputs.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["B", 4, "S", "S"]))
    graph = helper.make_graph(
        nodes, "mha", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 64])], inits
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    return model


@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("with_bias", [False, True])
def test_microsoft_multihead_attention(tmp_path, causal, with_bias):
    src, out = tmp_path / "mha.onnx", tmp_path / "out.onnx"
    onnx.save(_mha_model(causal, with_bias), src)
    report = rewrite(src, out, RewriteOptions(attributes={"top_k": 0}))
    assert report.replaced_by_form == {"MicrosoftMultiHeadAttention": 1}
    assert [(c.is_causal, c.mask) for c in report.replaced] == [(causal, "additive" if with_bias else "none")]
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((2, 20, 64)).astype(np.float32)}
    if with_bias:  # a graph input mask of 0 / -inf: a pure mask the op honours exactly
        feeds["bias"] = np.where(rng.random((2, 4, 20, 20)) < 0.2, -np.inf, 0.0).astype(np.float32)
        feeds["bias"][..., 0] = 0.0
    base = ort.InferenceSession(str(src)).run(None, feeds)[0]
    for so in (iceformer.session_options(2), ort.SessionOptions()):
        got = ort.InferenceSession(str(out), so).run(None, feeds)[0]
        np.testing.assert_allclose(got, base, atol=2e-5)


def _if_model():
    """An If whose two branches each hold a decomposed core over outer-scope Q/K/V (as merged decoders do)."""
    from onnx import TensorProto, helper

    def branch(name, scale):
        nodes = [  # heads split inside the branch, as in a merged decoder; inputs [B,S,H,D]
            helper.make_node("Transpose", ["q"], [f"{name}_q"], perm=[0, 2, 1, 3]),
            helper.make_node("Transpose", ["v"], [f"{name}_v"], perm=[0, 2, 1, 3]),
            helper.make_node("Transpose", ["k"], [f"{name}_kt"], perm=[0, 2, 3, 1]),
            helper.make_node("MatMul", [f"{name}_q", f"{name}_kt"], [f"{name}_s"]),
            helper.make_node(
                "Constant", [], [f"{name}_c"], value=helper.make_tensor("c", TensorProto.FLOAT, [], [scale])
            ),
            helper.make_node("Mul", [f"{name}_s", f"{name}_c"], [f"{name}_z"]),
            helper.make_node("Softmax", [f"{name}_z"], [f"{name}_p"], axis=-1),
            helper.make_node("MatMul", [f"{name}_p", f"{name}_v"], [f"{name}_y"]),
        ]
        return helper.make_graph(
            nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["B", 2, "S", 8])]
        )

    x = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", "S", 2, 8]) for n in ("q", "k", "v")]
    cond = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    node = helper.make_node("If", ["flag"], ["y"], then_branch=branch("then", 0.35), else_branch=branch("else", 0.2))
    graph = helper.make_graph(
        [node], "merged", x + [cond], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 2, "S", 8])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def test_cores_inside_if_branches(tmp_path):
    src, out = tmp_path / "if.onnx", tmp_path / "out.onnx"
    onnx.save(_if_model(), src)
    report = rewrite(src, out, RewriteOptions(attributes={"top_k": 0}))
    # Layers are numbered in the order onnx-ir walks subgraphs (attribute order: else_branch, then_branch).
    assert [(c.layer, round(c.scale, 6)) for c in report.replaced] == [(0, 0.2), (1, 0.35)]
    assert report.softmax_unmatched == 0
    onnx.checker.check_model(str(out))
    rng = np.random.default_rng(3)
    feeds = {n: rng.standard_normal((1, 12, 2, 8)).astype(np.float32) for n in ("q", "k", "v")}
    for flag in (True, False):
        feeds["flag"] = np.array(flag)
        base = ort.InferenceSession(str(src)).run(None, feeds)[0]
        for so in (iceformer.session_options(1), ort.SessionOptions()):
            np.testing.assert_allclose(ort.InferenceSession(str(out), so).run(None, feeds)[0], base, atol=2e-5)


def test_bart_encoder_decoder_and_cross_attention(exported, tmp_path):
    """Graph order: encoder self-attention x2, then per decoder layer self (causal, from positions) and cross."""
    report = rewrite(exported["bart_torchscript17"][0], tmp_path / "o.onnx")
    assert [(r.layer, r.mask_kind, r.bypassed, r.is_causal) for r in report.replaced] == [
        (0, "padding", True, 0),
        (1, "padding", True, 0),
        (2, "causal", True, 1),
        (3, "padding", True, 0),
        (4, "causal", True, 1),
        (5, "padding", True, 0),
    ]


def test_layer_spec_parsing():
    from iceformer.rewriter._rewrite import parse_layers

    assert parse_layers("0-3,8,20-", 23) == [0, 1, 2, 3, 8, 20, 21, 22]
    assert parse_layers(None, 3) == parse_layers("all", 3) == [0, 1, 2]
    assert parse_layers("5", 3) == []
    for bad in ("a", "3-1", "-x"):
        with pytest.raises(RewriteError, match="bad layer spec"):
            parse_layers(bad, 4)


@pytest.mark.parametrize("exporter", ["dynamo18", "torchscript17"])
def test_t5_encoder_decoder_with_allow_bias(exported_t5, tmp_path, exporter):
    """Encoder self x2 (bias), then per decoder layer self (bias, causal inside it) and cross (padding)."""
    src, out = exported_t5[exporter], tmp_path / "o.onnx"
    report = rewrite(src, out, RewriteOptions(allow_bias=True))
    assert [(r.layer, r.mask_kind, r.exact_only, r.bypassed) for r in report.replaced] == [
        (0, "bias", True, False),
        (1, "bias", True, False),
        (2, "bias", True, False),
        (3, "padding", False, True),
        (4, "bias", True, False),
        (5, "padding", False, True),
    ]
    feeds = _feeds()
    base = ort.InferenceSession(str(src)).run(None, feeds)[0]
    for so in (iceformer.session_options(2), ort.SessionOptions()):
        np.testing.assert_allclose(ort.InferenceSession(str(out), so).run(None, feeds)[0], base, atol=2e-5)
    report = rewrite(src, out)  # default: the bias cores stay as they were
    assert [r.layer for r in report.replaced] == [3, 5] and report.softmax_unmatched == 4


def test_cli_selection_causal_and_bias_flags(exported, exported_bias, tmp_path, capsys):
    src, out, js = exported["llama_gqa"][0], tmp_path / "o.onnx", tmp_path / "r.json"
    assert cli([str(src), str(out), "--layers", "1", "--causal", "off", "--json", str(js)]) == 0
    report = json.loads(js.read_text())
    assert [(c["layer"], c["is_causal"], c["bypassed"]) for c in report["replaced"]] == [(1, 0, False)]
    assert "core 0 not selected" in capsys.readouterr().err
    assert cli([str(src), str(out), "--skip-first", "2"]) == 2  # nothing left to rewrite
    assert cli([str(src), str(out), "--layers", "2-1"]) == 2
    assert "bad layer spec" in capsys.readouterr().err
    assert cli([str(exported_bias), str(out)]) == 2
    assert "the mask is a bias" in capsys.readouterr().err
    assert cli([str(exported_bias), str(out), "--allow-bias", "--json", str(js)]) == 0
    assert [c["exact_only"] for c in json.loads(js.read_text())["replaced"]] == [True, True]


def _assert_past_decoder_rewritten_exactly(src, tmp_path, feeds):
    """Both cores: causal bottom-right (S != T), GQA stripped after the past Concat, padding+causal mask bypassed;
    every output (hidden state or logits, and any presents) equals the original's, with the library and without."""
    out = tmp_path / "o.onnx"
    report = rewrite(src, out, RewriteOptions(attributes={"top_k": 0}))
    assert [(c.is_causal, c.mask_kind, c.bypassed, c.gqa_stripped) for c in report.replaced] == [
        (1, "padding+causal", True, True)
    ] * 2
    base = ort.InferenceSession(str(src)).run(None, feeds)
    for so in (iceformer.session_options(2), ort.SessionOptions()):
        for got, want in zip(ort.InferenceSession(str(out), so).run(None, feeds), base):
            np.testing.assert_allclose(got, want, atol=2e-5)
    return base


def test_decoder_with_past_key_values(exported_past, tmp_path):
    """Our dynamo export: S = 6 new tokens over P = 10 cached ones, left padding."""
    rng = np.random.default_rng(0)
    mask = np.ones((2, 16), np.int64)
    mask[1, :3] = 0
    feeds = {
        "input_ids": rng.integers(0, 100, (2, 6)),
        "attention_mask": mask,
        **{n: rng.standard_normal((2, 2, 10, 16)).astype(np.float32) for n in ("k0", "v0", "k1", "v1")},
    }
    _assert_past_decoder_rewritten_exactly(exported_past, tmp_path, feeds)


def test_optimum_decoder_with_past(exported_optimum, tmp_path):
    """optimum's text-generation-with-past export: S = 5 over P = 7; logits and the 4 presents."""
    rng = np.random.default_rng(0)
    mask = np.ones((2, 12), np.int64)
    mask[1, :2] = 0
    feeds = {
        "input_ids": rng.integers(0, 100, (2, 5)),
        "attention_mask": mask,
        "position_ids": np.tile(np.arange(7, 12), (2, 1)),
    }
    for i in range(2):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = rng.standard_normal((2, 2, 7, 16)).astype(np.float32)
    assert len(_assert_past_decoder_rewritten_exactly(exported_optimum, tmp_path, feeds)) == 5


def test_optimum_folder_generates_through_ort_model_for_causal_lm(exported_optimum, tmp_path):
    """The export folder as a whole (config.json beside model.onnx): rewritten into a new folder that
    ORTModelForCausalLM loads with our session options; 12 greedy tokens after 40 equal the original folder's (exact:
    the tiny prompt is below min_keys); the input folder is untouched."""
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    src, dst = exported_optimum.parent, tmp_path / "ice"
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    report = rewrite(src, dst)
    assert len(report.replaced) == 2 and any("ORTModelForCausalLM" in n for n in report.notes)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    assert sorted(p.name for p in dst.iterdir()) == sorted(before)
    ids = torch.tensor([np.random.default_rng(0).integers(0, 100, 40).tolist()])
    tokens = []
    for folder, opts in ((src, ort.SessionOptions()), (dst, iceformer.session_options(1))):
        model = ORTModelForCausalLM.from_pretrained(folder, session_options=opts, use_cache=True)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
        tokens.append(out[0, 40:].tolist())
    assert tokens[0] == tokens[1] and len(tokens[0]) == 12


def test_export_folder_with_several_models_is_refused(tmp_path):
    """An export folder is rewritten only when it holds one .onnx (which of several is loaded is not ours to
    guess); the error names them and nothing is written."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    for name in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
        (src / name).write_bytes(b"")
    with pytest.raises(RewriteError, match="exactly one .onnx model.*decoder_model.onnx, decoder_with_past_model.onnx"):
        rewrite(src, tmp_path / "dst")
    (src / "decoder_model.onnx").unlink()
    (src / "decoder_with_past_model.onnx").unlink()
    with pytest.raises(RewriteError, match=r"found none"):
        rewrite(src, tmp_path / "dst")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def _padded_feeds(seq: int, left: int = 3, right: int = 2):
    """Batch of 3: no padding, left padding, right padding; token ids seeded."""
    rng = np.random.default_rng(1)
    mask = np.ones((3, seq), np.int64)
    mask[1, :left] = 0
    mask[2, seq - right :] = 0
    return {"input_ids": rng.integers(0, 100, (3, seq)), "attention_mask": mask}


@pytest.mark.parametrize("name", list(SLIDING))
def test_sliding_window_masks_become_hard_windows(exported_sliding, tmp_path, name):
    """A sliding-window mask is read as padding + causal + window W (local_window_size = W): equal outputs at
    lengths far beyond the window (17 and 40 tokens against W = 3), with padding, with the library and without."""
    src, out = exported_sliding[name], tmp_path / "o.onnx"
    report = rewrite(src, out, RewriteOptions(attributes={"top_k": 0}))
    windows = SLIDING[name][1]
    assert [(r.bypassed, r.is_causal, r.window) for r in report.replaced] == [(True, 1, w) for w in windows]
    assert all(r.bypass_check.startswith("proven on probes") for r in report.replaced)
    node_windows = [
        next(a.i for a in n.attribute if a.name == "local_window_size")
        for n in onnx.load(out).graph.node
        if n.op_type == contract.OP_TYPE
    ]
    assert node_windows == windows
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    sessions = [
        ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
        for so in (iceformer.session_options(2), ort.SessionOptions())
    ]
    for seq in (17, 40):
        feeds = _padded_feeds(seq)
        want = ref.run(None, feeds)[0]
        # Padding query rows are left out: a left-padded one sees no key (the op gives zeros, the export a mean of
        # masked values).
        real = feeds["attention_mask"].astype(bool)
        for sess in sessions:
            got = sess.run(None, feeds)[0]
            np.testing.assert_allclose(got[real], want[real], atol=2e-5, rtol=1e-4)


def test_sliding_window_kept_as_mask_without_bypass(exported_sliding, tmp_path):
    src, out = exported_sliding["mistral"], tmp_path / "o.onnx"
    report = rewrite(src, out, RewriteOptions(attributes={"top_k": 0}, mask_bypass=False))
    assert [(r.bypassed, r.window) for r in report.replaced] == [(False, -1)] * 2
    feeds = _padded_feeds(30)
    want = ort.InferenceSession(str(src)).run(None, feeds)[0]
    got = ort.InferenceSession(str(out), iceformer.session_options(2)).run(None, feeds)[0]
    np.testing.assert_allclose(got[0], want[0], atol=2e-5, rtol=1e-4)


def test_per_head_lists_of_the_wrong_length_are_reported(exported, tmp_path):
    out = tmp_path / "o.onnx"
    with pytest.raises(RewriteError, match=r"head_tail_samples has 7 values, expected one per query head \(Hq = \d+\)"):
        rewrite(exported["llama_gqa"][0], out, RewriteOptions(attributes={"head_tail_samples": [64] * 7}))
    assert not out.exists()


def test_window_is_not_an_option(exported, tmp_path):
    with pytest.raises(RewriteError, match="local_window_size is read from each core"):
        rewrite(exported["llama_gqa"][0], tmp_path / "o.onnx", RewriteOptions(attributes={"local_window_size": 8}))


def _masked_core_model(kind: str, param: int = 4):
    """One decomposed core whose additive mask is padding (from attention_mask [B,T]) combined with positions
    (Range over S and T): "causal", "window" (causal, j > i - param), "chunked" (causal within chunks of param
    keys, Llama-4 style), "prefix" (causal, plus the first param keys visible to every query: prefix-LM)."""
    from onnx import TensorProto, helper

    n = helper.make_node
    i64 = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [], [v])  # noqa: E731
    nodes = [
        n("Shape", ["q"], ["s_1d"], start=2, end=3),
        n("Shape", ["k"], ["t_1d"], start=2, end=3),
        n("Constant", [], ["zero"], value=i64("zero", 0)),
        n("Constant", [], ["one"], value=i64("one", 1)),
        n("Constant", [], ["prm"], value=i64("prm", param)),
        n("Constant", [], ["ax0"], value=helper.make_tensor("ax0", TensorProto.INT64, [1], [0])),
        n("Constant", [], ["ax1"], value=helper.make_tensor("ax1", TensorProto.INT64, [1], [1])),
        n("Constant", [], ["ax12"], value=helper.make_tensor("ax12", TensorProto.INT64, [2], [1, 2])),
        n("Squeeze", ["s_1d", "ax0"], ["s"]),
        n("Squeeze", ["t_1d", "ax0"], ["t"]),
        n("Range", ["zero", "s", "one"], ["ri"]),
        n("Range", ["zero", "t", "one"], ["rj"]),
        n("Unsqueeze", ["ri", "ax1"], ["i"]),
        n("Unsqueeze", ["rj", "ax0"], ["j"]),
        n("LessOrEqual", ["j", "i"], ["causal"]),
    ]
    if kind == "window":
        nodes += [
            n("Sub", ["i", "prm"], ["lo"]),
            n("Greater", ["j", "lo"], ["inw"]),
            n("And", ["causal", "inw"], ["pos"]),
        ]
    elif kind == "chunked":
        nodes += [
            n("Div", ["i", "prm"], ["ci"]),
            n("Div", ["j", "prm"], ["cj"]),
            n("Equal", ["ci", "cj"], ["same"]),
            n("And", ["causal", "same"], ["pos"]),
        ]
    elif kind == "prefix":
        nodes += [n("Less", ["j", "prm"], ["pre"]), n("Or", ["causal", "pre"], ["pos"])]
    else:
        nodes += [n("Identity", ["causal"], ["pos"])]
    nodes += [
        n("Cast", ["attention_mask"], ["real"], to=TensorProto.BOOL),
        n("Unsqueeze", ["real", "ax12"], ["real4"]),
        n("And", ["pos", "real4"], ["keep"]),
        n("Constant", [], ["f0"], value=helper.make_tensor("f0", TensorProto.FLOAT, [], [0.0])),
        n("Constant", [], ["fmin"], value=helper.make_tensor("fmin", TensorProto.FLOAT, [], [-3.4028234663852886e38])),
        n("Where", ["keep", "f0", "fmin"], ["mask"]),
        n("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        n("MatMul", ["q", "kt"], ["qk"]),
        n("Constant", [], ["sc"], value=helper.make_tensor("sc", TensorProto.FLOAT, [], [0.25])),
        n("Mul", ["qk", "sc"], ["z"]),
        n("Add", ["z", "mask"], ["zm"]),
        n("Softmax", ["zm"], ["p"], axis=-1),
        n("MatMul", ["p", "v"], ["y"]),
    ]
    x = [helper.make_tensor_value_info(nm, TensorProto.FLOAT, ["B", 2, "S", 16]) for nm in ("q", "k", "v")]
    am = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "S"])
    graph = helper.make_graph(
        nodes, kind, x + [am], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 2, "S", 16])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize(
    "kind,bypassed,window,why",
    [
        ("causal", True, -1, "proven"),
        ("window", True, 4, "proven"),
        ("chunked", False, -1, "inconsistent offsets"),  # each chunk starts afresh: no single window
        ("prefix", False, -1, "is not padding"),  # the prefix is visible to earlier queries: not causal
    ],
)
def test_mask_bypass_only_when_proven(tmp_path, kind, bypassed, window, why):
    """Masks the structural classifier reads as padding + causal (Range comparisons and a 2-D padding input): the
    evaluation proves the causal and windowed ones and refuses chunked and prefix-LM masks, which then stay as
    tensors; outputs equal the original either way (left padding of 2 keys in the second row)."""
    src, out = tmp_path / f"{kind}.onnx", tmp_path / "o.onnx"
    onnx.save(_masked_core_model(kind), src)
    report = rewrite(src, out, RewriteOptions(attributes={"top_k": 0}))
    (core,) = report.replaced
    assert core.mask_kind == "padding+causal"
    assert (core.bypassed, core.window) == (bypassed, window)
    assert why in core.bypass_check
    rng = np.random.default_rng(4)
    feeds = {nm: rng.standard_normal((2, 2, 29, 16)).astype(np.float32) for nm in ("q", "k", "v")}
    feeds["attention_mask"] = np.ones((2, 29), np.int64)
    feeds["attention_mask"][1, :2] = 0
    want = ort.InferenceSession(str(src)).run(None, feeds)[0]
    for so in (iceformer.session_options(2), ort.SessionOptions()):
        got = ort.InferenceSession(str(out), so).run(None, feeds)[0]
        np.testing.assert_allclose(got[:, :, 2:], want[:, :, 2:], atol=2e-5, rtol=1e-4)


def test_optimum_run_time_scale_is_folded(exported_optimum_runtime_scale, tmp_path):
    """optimum's SDPA scale sqrt(1/sqrt(D)) on Q and on K^T, D read from Shape(Q) at run time: the static head size
    makes it 0.25 (D = 16); both cores rewritten and equal to the original with and without the library."""
    rng = np.random.default_rng(0)
    cases = {
        "bert17": {
            "input_ids": rng.integers(0, 100, (2, 30)),
            "attention_mask": np.ones((2, 30), np.int64),
            "token_type_ids": np.zeros((2, 30), np.int64),
        },
        "gpt2_past18": {
            "input_ids": rng.integers(0, 100, (2, 9)),
            "attention_mask": np.ones((2, 16), np.int64),
            "position_ids": np.tile(np.arange(7, 16), (2, 1)),
            **{
                f"past_key_values.{i}.{kind}": rng.standard_normal((2, 4, 7, 16)).astype(np.float32)
                for i in range(2)
                for kind in ("key", "value")
            },
        },
    }
    cases["bert17"]["attention_mask"][1, 25:] = 0
    cases["gpt2_past18"]["attention_mask"][1, :3] = 0
    for name, feeds in cases.items():
        src, out = exported_optimum_runtime_scale[name], tmp_path / f"{name}.onnx"
        report = rewrite(src, out, RewriteOptions(attributes={"top_k": 0}))
        assert [(round(c.scale, 6), c.bypassed, c.is_causal) for c in report.replaced] == [
            (0.25, True, int(name.startswith("gpt2")))
        ] * 2, name
        base = ort.InferenceSession(str(src)).run(None, feeds)
        for so in (iceformer.session_options(2), ort.SessionOptions()):
            for got, want in zip(ort.InferenceSession(str(out), so).run(None, feeds), base):
                np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_nodes_onnx_checker_rejects_but_onnxruntime_runs_are_kept(tmp_path):
    """ORT's transformers optimizer writes SimplifiedLayerNormalization in the default domain: onnx.checker rejects
    the model, onnxruntime runs it. The rewrite goes through (validated by onnxruntime, with a note) and is exact."""
    from onnx import TensorProto, helper

    model = _masked_core_model("causal")
    norm = helper.make_node("SimplifiedLayerNormalization", ["q_in", "gamma"], ["q"], axis=-1, epsilon=1e-6)
    model.graph.node.insert(0, norm)
    model.graph.initializer.append(helper.make_tensor("gamma", TensorProto.FLOAT, [16], np.linspace(0.5, 1.5, 16)))
    model.graph.input[0].name = "q_in"
    src, out = tmp_path / "sln.onnx", tmp_path / "o.onnx"
    onnx.save(model, src)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(str(src))
    report = rewrite(src, out, RewriteOptions(attributes={"top_k": 0}))
    assert len(report.replaced) == 1 and "validated by loading it in onnxruntime" in report.notes[0]
    rng = np.random.default_rng(5)
    feeds = {
        "q_in": rng.standard_normal((2, 2, 21, 16)).astype(np.float32),
        **{nm: rng.standard_normal((2, 2, 21, 16)).astype(np.float32) for nm in ("k", "v")},
        "attention_mask": np.ones((2, 21), np.int64),
    }
    want = ort.InferenceSession(str(src)).run(None, feeds)[0]
    got = ort.InferenceSession(str(out), iceformer.session_options(2)).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_one_core_that_cannot_be_rewritten_is_skipped_not_fatal(tmp_path):
    """Two cores, one scaled by a run-time graph input: that one is reported and left as it was, the other is
    rewritten, and the model stays exact; --strict refuses the partial rewrite and writes nothing."""
    from onnx import TensorProto, helper

    n = helper.make_node
    nodes = []
    for tag, scale in (("a", "c25"), ("b", "s")):
        nodes += [
            n("Transpose", ["k"], [f"{tag}_kt"], perm=[0, 1, 3, 2]),
            n("MatMul", ["q", f"{tag}_kt"], [f"{tag}_qk"]),
            n("Mul", [f"{tag}_qk", scale], [f"{tag}_z"]),
            n("Softmax", [f"{tag}_z"], [f"{tag}_p"], axis=-1),
            n("MatMul", [f"{tag}_p", "v"], [f"{tag}_y"]),
        ]
    nodes += [
        n("Constant", [], ["c25"], value=helper.make_tensor("c25", TensorProto.FLOAT, [], [0.25])),
        n("Add", ["a_y", "b_y"], ["y"]),
    ]
    x = [helper.make_tensor_value_info(nm, TensorProto.FLOAT, ["B", 2, "S", 16]) for nm in ("q", "k", "v")]
    graph = helper.make_graph(
        nodes,
        "two",
        x + [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 2, "S", 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    src, out = tmp_path / "two.onnx", tmp_path / "o.onnx"
    onnx.save(model, src)
    report = rewrite(src, out, RewriteOptions(attributes={"top_k": 0}))
    assert len(report.replaced) == 1 and report.softmax_unmatched == 1  # no rule matches a run-time scale
    rng = np.random.default_rng(6)
    feeds = {nm: rng.standard_normal((1, 2, 12, 16)).astype(np.float32) for nm in ("q", "k", "v")}
    feeds["s"] = np.array(0.3, np.float32)
    want = ort.InferenceSession(str(src)).run(None, feeds)[0]
    np.testing.assert_allclose(
        ort.InferenceSession(str(out), iceformer.session_options(2)).run(None, feeds)[0], want, atol=2e-5, rtol=1e-4
    )
    strict = tmp_path / "strict.onnx"
    assert cli([str(src), str(strict), "--strict"]) == 2
    assert not strict.exists()


@pytest.mark.parametrize("causal,mask", [(1, None), (0, "float"), (0, "bool")])
def test_onnx_attention_with_past(tmp_path, causal, mask):
    """Standard Attention (opset 23) with past_key/past_value, GQA 4/2: presents = Concat(past, new), the core over
    them (causal bottom-right); y and both presents equal the original with the library and without."""
    from onnx import TensorProto, helper

    ins = ["q", "k", "v", "m" if mask else "", "pk", "pv"]
    node = helper.make_node(
        "Attention", ins, ["y", "present_k", "present_v"], is_causal=causal, q_num_heads=4, kv_num_heads=2
    )
    vi = lambda name, shape, t=TensorProto.FLOAT: helper.make_tensor_value_info(name, t, shape)  # noqa: E731
    inputs = [
        vi("q", ["B", 4, "S", 16]),
        vi("k", ["B", 2, "S", 16]),
        vi("v", ["B", 2, "S", 16]),
        vi("pk", ["B", 2, "P", 16]),
        vi("pv", ["B", 2, "P", 16]),
    ]
    if mask:
        inputs.append(vi("m", ["B", 1, "S", "T"], TensorProto.BOOL if mask == "bool" else TensorProto.FLOAT))
    graph = helper.make_graph(
        [node], "attn_past", inputs, [vi("y", ["B", 4, "S", 16]), vi("present_k", None), vi("present_v", None)]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    src, out = tmp_path / "a.onnx", tmp_path / "o.onnx"
    onnx.save(model, src)
    report = rewrite(src, out, RewriteOptions(attributes={"top_k": 0}))
    assert report.replaced_by_form == {"OnnxAttentionWithPast": 1}
    assert [(c.is_causal, c.mask) for c in report.replaced] == [
        (causal, {None: "none", "float": "additive", "bool": "boolean"}[mask])
    ]
    rng = np.random.default_rng(7)
    S, P = 5, 9
    feeds = {
        "q": rng.standard_normal((2, 4, S, 16)),
        "k": rng.standard_normal((2, 2, S, 16)),
        "v": rng.standard_normal((2, 2, S, 16)),
        "pk": rng.standard_normal((2, 2, P, 16)),
        "pv": rng.standard_normal((2, 2, P, 16)),
    }
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    if mask:
        keep = rng.random((2, 1, S, P + S)) > 0.3
        keep[..., -1] = True
        feeds["m"] = keep if mask == "bool" else np.where(keep, 0.0, -np.inf).astype(np.float32)
    want = ort.InferenceSession(str(src)).run(None, feeds)
    for so in (iceformer.session_options(2), ort.SessionOptions()):
        for got, ref in zip(ort.InferenceSession(str(out), so).run(None, feeds), want):
            np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)


def test_ort_optimizer_bert_attention(exported_optimum_runtime_scale, tmp_path):
    """com.microsoft.Attention as ORT's transformers optimizer writes it for BERT (packed QKV weights, mask_index =
    valid lengths from EmbedLayerNormalization): both cores rewritten, outputs equal with and without the library."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = tmp_path / "bert_opt.onnx"
    optimize_model(
        str(exported_optimum_runtime_scale["bert17"]), model_type="bert", num_heads=4, hidden_size=64
    ).save_model_to_file(str(optimized))
    assert sum(n.op_type == "Attention" and n.domain == "com.microsoft" for n in onnx.load(optimized).graph.node) == 2
    out = tmp_path / "o.onnx"
    report = rewrite(optimized, out, RewriteOptions(attributes={"top_k": 0}))
    assert report.replaced_by_form == {"MicrosoftAttention": 2}
    rng = np.random.default_rng(8)
    feeds = {
        "input_ids": rng.integers(0, 100, (2, 23)),
        "attention_mask": np.ones((2, 23), np.int64),
        "token_type_ids": np.zeros((2, 23), np.int64),
    }
    feeds["attention_mask"][1, 17:] = 0
    want = ort.InferenceSession(str(optimized)).run(None, feeds)[0]
    for so in (iceformer.session_options(2), ort.SessionOptions()):
        np.testing.assert_allclose(ort.InferenceSession(str(out), so).run(None, feeds)[0], want, atol=2e-5, rtol=1e-4)


def _save_ms_model(graph, tmp_path: Path) -> Path:
    """A hand-built graph of com.microsoft nodes saved as a model (opset 17 + com.microsoft 1): its path."""
    from onnx import helper

    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    onnx.save(model, tmp_path / "a.onnx")
    return tmp_path / "a.onnx"


@pytest.mark.parametrize("unidirectional", [0, 1])
def test_microsoft_attention_with_a_2d_mask(tmp_path, unidirectional):
    """A hand-built com.microsoft.Attention with a raw [B,T] mask_index (padding, proven and bypassed)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(9)
    node = helper.make_node(
        "Attention", ["x", "w", "b", "mask"], ["y"], domain="com.microsoft", num_heads=4, unidirectional=unidirectional
    )
    graph = helper.make_graph(
        [node],
        "ms_attention",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 32]),
            helper.make_tensor_value_info("mask", TensorProto.INT32, ["B", "S"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 32])],
        [
            onnx.numpy_helper.from_array(rng.standard_normal((32, 96)).astype(np.float32) * 0.3, "w"),
            onnx.numpy_helper.from_array(rng.standard_normal(96).astype(np.float32) * 0.1, "b"),
        ],
    )
    src, out = _save_ms_model(graph, tmp_path), tmp_path / "o.onnx"
    report = rewrite(src, out, RewriteOptions(attributes={"top_k": 0}))
    (core,) = report.replaced
    assert (core.is_causal, core.bypassed) == (unidirectional, True), core.bypass_check
    feeds = {"x": rng.standard_normal((2, 19, 32)).astype(np.float32), "mask": np.ones((2, 19), np.int32)}
    feeds["mask"][1, 14:] = 0
    want = ort.InferenceSession(str(src)).run(None, feeds)[0]
    got = ort.InferenceSession(str(out), iceformer.session_options(2)).run(None, feeds)[0]
    np.testing.assert_allclose(got[0], want[0], atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(got[1, :14], want[1, :14], atol=2e-5, rtol=1e-4)  # real query rows


def test_microsoft_attention_with_attention_bias_and_no_qkv_bias(tmp_path):
    """T5's encoder as ORT's optimizer fuses it: no QKV bias, scale 1, a 2-D mask_index and an additive
    attention_bias [1,H,S,T] (a table read: a bias core). Left unchanged with the reason by default; with allow_bias
    an exact-only op over padding + bias, equal to the original with and without the library."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(10)
    table = rng.standard_normal((1, 4, 64, 64)).astype(np.float32)
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["s"], axis=0),
        helper.make_node("Unsqueeze", ["s", "zero"], ["s1"]),
        helper.make_node("Concat", ["zero", "s1"], ["ends"], axis=0),
        helper.make_node("Slice", ["table", "zeros2", "ends2", "axes23"], ["bias"]),  # [1,4,S,S] of the table
        helper.make_node(
            "Attention", ["x", "w", "", "mask", "", "bias"], ["y"], domain="com.microsoft", num_heads=4, scale=1.0
        ),
    ]
    nodes[3:4] = [helper.make_node("Concat", ["s1", "s1"], ["ends2"], axis=0)]
    graph = helper.make_graph(
        nodes,
        "t5_like",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 32]),
            helper.make_tensor_value_info("mask", TensorProto.INT32, ["B", "S"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 32])],
        [
            onnx.numpy_helper.from_array(rng.standard_normal((32, 96)).astype(np.float32) * 0.3, "w"),
            onnx.numpy_helper.from_array(table, "table"),
            onnx.numpy_helper.from_array(np.array(1, np.int64), "one"),
            onnx.numpy_helper.from_array(np.array([0], np.int64), "zero"),
            onnx.numpy_helper.from_array(np.array([0, 0], np.int64), "zeros2"),
            onnx.numpy_helper.from_array(np.array([2, 3], np.int64), "axes23"),
        ],
    )
    src, out = _save_ms_model(graph, tmp_path), tmp_path / "o.onnx"
    with pytest.raises(RewriteError, match="the mask is a bias"):
        rewrite(src, out, RewriteOptions())
    report = rewrite(src, out, RewriteOptions(allow_bias=True))
    (core,) = report.replaced
    assert (core.bypassed, core.exact_only, core.mask_kind, core.scale) == (False, True, "bias", 1.0), core
    feeds = {"x": rng.standard_normal((2, 19, 32)).astype(np.float32), "mask": np.ones((2, 19), np.int32)}
    feeds["mask"][1, 14:] = 0
    want = ort.InferenceSession(str(src)).run(None, feeds)[0]
    for so in (iceformer.session_options(2), ort.SessionOptions()):
        got = ort.InferenceSession(str(out), so).run(None, feeds)[0]
        np.testing.assert_allclose(got[0], want[0], atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(got[1, :14], want[1, :14], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("unidirectional", [0, 1])
def test_microsoft_multihead_attention_with_past(tmp_path, unidirectional):
    """com.microsoft.MultiHeadAttention as ORT's fused decoders use it: 3-D new Q/K/V, past_key/past_value
    [B,H,P,D] and present outputs. S = 5 new tokens over P = 7: y and both presents equal ORT's kernel, with the
    library and without it."""
    from onnx import TensorProto, helper

    node = helper.make_node(
        "MultiHeadAttention",
        ["q", "k", "v", "", "", "", "past_k", "past_v"],
        ["y", "present_k", "present_v"],
        domain="com.microsoft",
        num_heads=4,
        unidirectional=unidirectional,
    )
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "mha_past",
        [helper.make_tensor_value_info(n, f, ["B", "S", 32]) for n in ("q", "k", "v")]
        + [helper.make_tensor_value_info(n, f, ["B", 4, "P", 8]) for n in ("past_k", "past_v")],
        [helper.make_tensor_value_info("y", f, ["B", "S", 32])]
        + [helper.make_tensor_value_info(n, f, ["B", 4, "T", 8]) for n in ("present_k", "present_v")],
    )
    src, out = _save_ms_model(graph, tmp_path), tmp_path / "o.onnx"
    report = rewrite(src, out, RewriteOptions(attributes={"top_k": 0}))
    assert report.replaced_by_form == {"MicrosoftMultiHeadAttentionWithPast": 1}
    assert report.replaced[0].is_causal == unidirectional
    rng = np.random.default_rng(11)
    feeds = {n: rng.standard_normal((2, 5, 32)).astype(np.float32) for n in ("q", "k", "v")}
    feeds.update({n: rng.standard_normal((2, 4, 7, 8)).astype(np.float32) for n in ("past_k", "past_v")})
    want = ort.InferenceSession(str(src)).run(None, feeds)
    for so in (iceformer.session_options(2), ort.SessionOptions()):
        for got, ref in zip(ort.InferenceSession(str(out), so).run(None, feeds), want):
            np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)
