"""Each variant of the decomposed core (rules/DecomposedSdpa) on a hand-built one-core graph: accepted variants are
rewritten and equal to the original; refusals are skips with their reason. Also the graph stages' contracts."""

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from iceformer.rewriter import RewriteOptions, rewrite_model
from iceformer.rewriter._canonical import LAYER_TAG
from iceformer.rewriter._passes import CanonicalisePass, CoreRulesPass, LowerPass
from onnx import TensorProto, helper, numpy_helper

import iceformer

D = 8


def _core(variant: str) -> onnx.ModelProto:
    """softmax(scale Q K^T [masked]) V over Q, K, V [1,2,5,8] (K [1,5,2,8] for "bthd"), one variant at a time."""
    c = lambda name, v: numpy_helper.from_array(np.asarray(v), name)  # noqa: E731
    inits = [c("s", np.float32(D**-0.5)), c("root_d", np.float32(D**0.5)), c("half_s", np.float32(D**-0.25))]
    inits += [c("ninf", np.finfo(np.float32).min), c("zero", np.float32(0.0)), c("flat", np.array([2, 5, D], np.int64))]
    inits += [c("kt_shape", np.array([1, 2, D, 5], np.int64))]
    n = helper.make_node
    kt = [n("Transpose", ["K"], ["kt"], perm=[0, 2, 3, 1] if variant == "bthd" else [0, 1, 3, 2])]
    if variant == "flat":
        kt = [n("Reshape", ["K", "flat"], ["kf"]), n("Transpose", ["kf"], ["kft"], perm=[0, 2, 1])]
        kt.append(n("Reshape", ["kft", "kt_shape"], ["kt"]))
    nodes = list(kt)
    if variant == "scale_both":
        nodes += [
            n("Mul", ["Q", "half_s"], ["q2"]),
            n("Mul", ["kt", "half_s"], ["kt2"]),
            n("MatMul", ["q2", "kt2"], ["x"]),
        ]
    else:
        nodes.append(n("MatMul", ["Q", "kt"], ["qk"]))
        scale = {"div": ("Div", "root_d"), "runtime_scale": ("Mul", "scale_in")}.get(variant, ("Mul", "s"))
        nodes.append(n(scale[0], ["qk", scale[1]], ["x"]))
    if variant in ("where", "where_zero"):
        nodes.append(n("Where", ["cond", "x", "ninf" if variant == "where" else "zero"], ["xm"]))
    else:
        nodes.append(n("Identity", ["x"], ["xm"]))
    nodes.append(n("Softmax", ["xm"], ["p"], axis=-1))
    if variant == "nan_guard":
        nodes += [n("IsNaN", ["p"], ["nan"]), n("Where", ["nan", "zero", "p"], ["pg"])]
    elif variant == "castlike":
        nodes.append(n("CastLike", ["p", "V"], ["pg"]))
    else:
        nodes.append(n("Identity", ["p"], ["pg"]))
    nodes.append(n("MatMul", ["pg", "V"], ["y"]))
    f = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("Q", f, [1, 2, 5, D] if variant != "rank3" else [2, 5, D]),  # rank 3 broadcasts
        helper.make_tensor_value_info("K", f, [1, 5, 2, D] if variant == "bthd" else [1, 2, 5, D]),
        helper.make_tensor_value_info("V", f, [1, 2, 5, D]),
    ]
    if variant in ("where", "where_zero"):
        inputs.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, [1, 1, 5, 5]))
    if variant == "runtime_scale":
        inputs.append(helper.make_tensor_value_info("scale_in", f, []))
    graph = helper.make_graph(nodes, variant, inputs, [helper.make_tensor_value_info("y", f, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _feeds(variant: str) -> dict:
    rng = np.random.default_rng(3)
    feeds = {name: rng.standard_normal((1, 2, 5, D)).astype(np.float32) for name in ("Q", "K", "V")}
    if variant == "bthd":
        feeds["K"] = rng.standard_normal((1, 5, 2, D)).astype(np.float32)
    if variant == "where":
        feeds["cond"] = np.tril(np.ones((5, 5), bool))[None, None]
    return feeds


@pytest.mark.parametrize("variant", ["mul", "div", "scale_both", "bthd", "flat", "where", "nan_guard", "castlike"])
def test_accepted_variant(variant, tmp_path):
    proto = _core(variant)
    model, report = rewrite_model(ir.serde.deserialize_model(proto), RewriteOptions(attributes={"top_k": 0}))
    assert report.replaced_by_form == {"DecomposedSdpa": 1} and not report.skipped, report.skipped
    assert report.replaced[0].scale == pytest.approx(D**-0.5, rel=1e-6)
    out = tmp_path / "o.onnx"
    ir.save(model, out)
    want = ort.InferenceSession(proto.SerializeToString()).run(None, _feeds(variant))[0]
    for so in (iceformer.session_options(1), ort.SessionOptions()):
        got = ort.InferenceSession(str(out), so).run(None, _feeds(variant))[0]
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "variant, reason",
    [
        ("runtime_scale", "qk_scale is not a constant nonzero scalar (run-time scale)"),
        ("where_zero", "does not fill with a very negative constant"),
        ("rank3", "query has rank 3, expected 4"),
    ],
)
def test_refused_variant_is_a_skip_with_its_reason(variant, reason):
    model = ir.serde.deserialize_model(_core(variant))
    _, report = rewrite_model(model, RewriteOptions())
    assert not report.replaced
    assert any(reason in s.reason for s in report.skipped), report.skipped


def test_stages_carry_the_layer_index_and_check_what_they_promise():
    """Core rules tag each canonical node with its layer; lowering leaves none of them and says so when one is left."""
    model = ir.serde.deserialize_model(_core("mul"))
    CanonicalisePass()(model)
    cores = CoreRulesPass(allow_bias=False, layers=None, skip_first=0)(model)
    assert (cores.found, cores.forms, cores.skipped) == (1, {"DecomposedSdpa": 1}, [])
    (canonical,) = [n for n in model.graph if n.op_type == "Sdpa"]
    assert canonical.metadata_props[LAYER_TAG] == "0"
    with pytest.raises(ValueError, match="1 canonical node"):
        LowerPass({}, True, "auto").ensures(model)
    lowered = LowerPass({}, True, "auto")(model)
    assert [c.layer for c in lowered.cores] == [0]
    (ours,) = [n for n in model.graph if n.op_type == "KnnAttention"]
    assert ours.metadata_props[LAYER_TAG] == "0"
