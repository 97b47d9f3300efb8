"""The contract is stated once (Python); the native registration and docs/contract.md must agree with it."""

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from iceformer.ops import (
    contract,
    make_gqa_model,
    make_knn_attention_model,
    native_contract,
    session_options,
    simd_tiers,
    simd_variant,
)
from iceformer.ops._library import SIMD_TIERS
from iceformer.ops.cases import AttentionCase
from iceformer.tools.docs import render

from tests.support.ops import run_case

CONTRACT_DOC = Path(__file__).resolve().parents[2] / "docs" / "contract.md"


def test_native_registration_matches_python_contract():
    assert native_contract() == contract.as_dict()
    assert native_contract(gqa=True) == contract.gqa_as_dict()


def test_gqa_shares_the_knn_attributes():
    """GroupQueryAttention's k-NN attributes are KnnAttention's entries (one home), after GQA's own."""
    names = [a.name for a in contract.GQA_ATTRIBUTES]
    knn = [a for a in contract.ATTRIBUTES if a.name not in ("is_causal", "scale", "local_window_size")]
    assert contract.GQA_ATTRIBUTES[-len(knn) :] == tuple(knn)
    assert len(set(names)) == len(names)


def test_contract_doc_carries_the_contract_tables():
    text = CONTRACT_DOC.read_text()
    assert contract.markdown() in text and contract.markdown(gqa=True) in text
    assert render(text) == text  # regenerate with: python -m iceformer.tools.docs docs/contract.md


def test_simd_variant_is_the_best_tier_this_cpu_runs():
    tiers = simd_tiers()
    assert tiers[-1] == "scalar" and set(tiers) <= set(SIMD_TIERS)
    # Ordered as SIMD_TIERS (best first); avx512-hwy is offered only when forced.
    assert tiers == [t for t in SIMD_TIERS if t in tiers]
    if os.environ.get("ICEFORMER_SIMD", "auto") == "auto":
        assert simd_variant() == next(t for t in tiers if t != "avx512-hwy")
    if platform.machine() in ("x86_64", "AMD64"):
        assert "neon" not in tiers


def test_op_statistics_name_the_simd_tier(tmp_stats):
    run_case(AttentionCase(S=20, T=30))
    assert json.loads(tmp_stats.read_text().splitlines()[-1])["simd"] == simd_variant()


@pytest.mark.parametrize(
    "value, reason",
    [("avx9000", "unknown tier"), ("neon", "not built for this architecture")]
    if platform.machine() in ("x86_64", "AMD64")
    else [("avx9000", "unknown tier"), ("avx2", "not built for this architecture")],
)
def test_a_tier_the_library_cannot_run_is_refused_when_it_registers(value, reason):
    """ICEFORMER_SIMD naming an unknown tier, or one this build or CPU cannot run, is an ORT error at registration
    that lists the tiers that do run (checked in a subprocess: dispatch is per process)."""
    code = "import iceformer\ntry:\n    iceformer.session_options()\nexcept Exception as e:\n    print(e)\n"
    res = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, ICEFORMER_SIMD=value), capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert f"ICEFORMER_SIMD={value}: {reason}" in res.stdout and "scalar" in res.stdout, res.stdout


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


# One out-of-range value per attribute of both contracts, and what the error says (None: no value is out of range).
OUT_OF_RANGE = {
    "knn": {
        "is_causal": (2, r"is_causal=2 is invalid, expected 0 or 1"),
        "local_window_size": (0, r"local_window_size=0 is invalid, expected -1 \(no window\) or >= 1"),
        "scale": (float("nan"), r"scale=nan is invalid, expected a finite float"),
        "top_k": (-1, r"top_k=-1 is invalid, expected >= 0"),
        "search": (2, r"search=2 is invalid, expected 0 \(low-rank scoring\) or 1"),
        "rank": (4097, r"rank=4097 is invalid, expected 1..4096"),
        "L": (0, r"L=0 is invalid, expected 1..64"),
        "m": (65, r"m=65 is invalid, expected 1..64"),
        "max_candidates": (1 << 41, r"max_candidates=2199023255552 is invalid, expected <= 2\^40"),
        "candidate_fraction": (1.5, r"candidate_fraction=1.5.* is invalid, expected 0..1"),
        "min_keys": (-1, r"min_keys=-1 is invalid, expected >= 0"),
        "decode_min_keys": (-1, r"decode_min_keys=-1 is invalid, expected >= 0"),
        "local_window": (-1, r"local_window=-1 is invalid, expected >= 0"),
        "num_sink": (-2, r"num_sink=-2 is invalid, expected >= 0"),
        "tail_samples": (-5, r"tail_samples=-5 is invalid, expected >= 0"),
        "tail_limit": (-0.5, r"tail_limit=-0.5.* is invalid, expected 0..1"),
        "seed": None,
        "auto_window": (-1, r"auto_window=-1 is invalid, expected >= 0"),
        "auto_window_error": (1.5, r"auto_window_error=1.5.* is invalid, expected 0..1"),
        "head_budgets": ([8, -1], r"head_budgets\[1\]=-1 is invalid, expected 0..2\^40"),
        "head_tail_samples": ([1 << 41], r"head_tail_samples\[0\]=2199023255552 is invalid, expected 0..2\^40"),
        "head_windows": ([4, -3], r"head_windows\[1\]=-3 is invalid, expected 0..2\^40"),
    },
    "gqa": {
        "num_heads": (0, r"num_heads = 0 must be a positive multiple of kv_num_heads"),
        "kv_num_heads": (3, r"num_heads = 4 must be a positive multiple of kv_num_heads = 3"),
        "scale": (float("inf"), r"scale and softcap must be finite"),
        "softcap": (-1.0, r"softcap >= 0"),
        "local_window_size": (-2, r"local_window_size = -2 is invalid, expected -1 or >= 1"),
        "do_rotary": (2, r"do_rotary = 2, expected 0 or 1"),
        "rotary_interleaved": (2, r"rotary_interleaved = 2, expected 0 or 1"),
        "causal": (3, r"causal = 3, expected 0 or 1"),
        "smooth_softmax": (1, r"smooth_softmax = 1 is not supported"),
        "qk_output": (1, r"qk_output is not supported"),
        "sliding_window_cache": (1, r"sliding_window_cache = 1 .* is not supported"),
    },
}
SHARED_KNN = [a.name for a in contract.ATTRIBUTES[3:]]  # GroupQueryAttention reads these with KnnAttention's code


def _with_attribute(op: str, name: str, value):
    """A one-node model of `op` whose attribute `name` is set to `value` as given (its Python type decides the
    ONNX attribute type: the builders' coercion is bypassed)."""
    model = make_knn_attention_model() if op == "knn" else make_gqa_model(num_heads=4, kv_num_heads=2)
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, onnx.helper.make_attribute(name, value)])
    return model.SerializeToString()


def _specs(op):
    return contract.ATTRIBUTES if op == "knn" else contract.GQA_ATTRIBUTES


def test_every_attribute_has_an_out_of_range_case():
    for op in ("knn", "gqa"):
        own = {a.name for a in _specs(op)} - (set(SHARED_KNN) if op == "gqa" else set())
        assert set(OUT_OF_RANGE[op]) == own, op


@pytest.mark.parametrize("op,name", [(op, a.name) for op in ("knn", "gqa") for a in _specs(op)])
def test_each_attribute_of_the_wrong_type_is_an_ort_error(op, name):
    spec = contract.attribute(name) if op == "knn" else contract.gqa_attribute(name)
    wrong = {"int": 1.5, "float": 1, "ints": 1}[spec.type]
    with pytest.raises(Exception, match=f"attribute {name} has the wrong type, expected {spec.type}"):
        ort.InferenceSession(_with_attribute(op, name, wrong), session_options(1), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    "op,name", [(op, n) for op in ("knn", "gqa") for n in OUT_OF_RANGE[op]] + [("gqa", n) for n in SHARED_KNN]
)
def test_each_attribute_out_of_range_is_an_ort_error(op, name):
    case = OUT_OF_RANGE["knn" if name in SHARED_KNN else op][name]
    if case is None:
        pytest.skip(f"{name}: every value of its type is valid")
    value, message = case
    with pytest.raises(Exception, match=message):
        ort.InferenceSession(_with_attribute(op, name, value), session_options(1), providers=["CPUExecutionProvider"])


def test_builder_stores_float_attributes_as_floats():
    """tail_limit=1 (a Python int) must become a FLOAT attribute, or ORT refuses the node for its type."""
    model = make_knn_attention_model(tail_limit=1, top_k=8)
    attrs = {a.name: a for a in model.graph.node[0].attribute}
    assert attrs["tail_limit"].type == onnx.AttributeProto.FLOAT and attrs["tail_limit"].f == 1.0
    assert attrs["top_k"].type == onnx.AttributeProto.INT
    ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])


def test_attribute_text_parses_to_the_contract_type():
    assert contract.parse_attribute("min_keys=4096") == ("min_keys", 4096)
    assert contract.parse_attribute("tail_limit=1") == ("tail_limit", 1.0)
    assert contract.parse_attribute("head_budgets=64,0,512") == ("head_budgets", [64, 0, 512])
    assert contract.parse_attribute("head_tail_samples=") == ("head_tail_samples", [])
    with pytest.raises(argparse.ArgumentTypeError, match="top_k expects an int, got '1.5'"):
        contract.parse_attribute("top_k=1.5")
    with pytest.raises(argparse.ArgumentTypeError, match="head_budgets expects a list of ints, got '64;128'"):
        contract.parse_attribute("head_budgets=64;128")
    with pytest.raises(argparse.ArgumentTypeError, match="KnnAttention has no attribute 'topk'"):
        contract.parse_attribute("topk=3")
