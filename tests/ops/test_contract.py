"""The contract is stated once (Python); the native registration and the README must agree with it."""

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from iceformer.ops import contract, make_knn_attention_model, native_contract, session_options, simd_variant
from iceformer.tools.docs import render

README = Path(__file__).resolve().parents[2] / "README.md"


def test_native_registration_matches_python_contract():
    assert native_contract() == contract.as_dict()
    assert native_contract(gqa=True) == contract.gqa_as_dict()


def test_gqa_shares_the_knn_attributes():
    """GroupQueryAttention's k-NN attributes are KnnAttention's entries (one home), after GQA's own."""
    names = [a.name for a in contract.GQA_ATTRIBUTES]
    knn = [a for a in contract.ATTRIBUTES if a.name not in ("is_causal", "scale", "local_window_size")]
    assert contract.GQA_ATTRIBUTES[-len(knn):] == tuple(knn)
    assert len(set(names)) == len(names)


def test_readme_carries_the_contract_table():
    text = README.read_text()
    assert contract.markdown() in text and contract.markdown(gqa=True) in text
    assert render(text) == text  # regenerate with: python -m iceformer.tools.docs README.md


def test_simd_variant_is_known():
    assert simd_variant() in {"avx512-vnni", "avx512", "scalar"}


def test_shape_inference_types_the_output():
    model = make_knn_attention_model()
    so = session_options(1)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out = sess.get_outputs()[0]
    assert out.type == "tensor(float)"
    # Symbolic dims flow from Q (B,Hq,S) and V (Dv).
    assert out.shape == ["B", "Hq", "S", "Dv"]


def test_unknown_attribute_name_is_refused_by_the_builder():
    with pytest.raises(KeyError, match="no attribute 'topk'"):
        make_knn_attention_model(topk=3)


def test_attribute_of_wrong_type_is_an_ort_error():
    model = make_knn_attention_model()
    model.graph.node[0].attribute.append(onnx.helper.make_attribute("top_k", 1.5))
    with pytest.raises(Exception, match="attribute top_k has the wrong type"):
        ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])


def test_builder_stores_float_attributes_as_floats():
    """tail_limit=1 (a Python int) must become a FLOAT attribute, or ORT refuses the node for its type."""
    model = make_knn_attention_model(tail_limit=1, top_k=8)
    attrs = {a.name: a for a in model.graph.node[0].attribute}
    assert attrs["tail_limit"].type == onnx.AttributeProto.FLOAT and attrs["tail_limit"].f == 1.0
    assert attrs["top_k"].type == onnx.AttributeProto.INT
    ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])
