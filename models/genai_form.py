"""A Llama/Qwen2-architecture Hugging Face model written in onnxruntime-genai's CPU fp32 form, without the builder.

genai's model builder (`python -m onnxruntime_genai.models.builder`) needs transformers 5, which this project
cannot install beside optimum (transformers < 4.58). This writes the graph the builder writes for these
architectures, from the same weights: token Gather; per layer SimplifiedLayerNormalization, one packed QKV MatMul
(+ bias for Qwen2), com.microsoft.GroupQueryAttention (rotary inside from cos/sin caches, past/present KV,
seqlens_k and total_sequence_length from attention_mask), o_proj, SimplifiedLayerNormalization, SiLU-gated MLP;
final norm and the lm_head on the last position only (the builder's prune_lm_head); and genai_config.json with
past_present_share_buffer. Checked against the builder's SmolLM2 folder (same logits to float rounding; see
tests/models/test_genai_form.py and docs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class DecoderSpec:
    """What the graph and genai_config.json need besides the weights (Hugging Face config names in comments)."""

    layers: int  # num_hidden_layers
    hidden: int  # hidden_size
    heads: int  # num_attention_heads (Hq)
    kv_heads: int  # num_key_value_heads (Hkv)
    head_dim: int  # D
    vocab: int  # vocab_size
    rope_theta: float = 10000.0
    eps: float = 1e-5  # rms_norm_eps
    window: int = -1  # sliding window of every layer (-1: none)
    rotary_interleaved: int = 0  # 1: rotate pairs (2i, 2i+1) (Hugging Face Llama/Qwen2: 0)
    model_type: str = "llama"
    bos: int = 0
    eos: int = 0
    pad: int = 0

    @classmethod
    def from_config(cls, cfg) -> DecoderSpec:
        D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
        window = int(cfg.sliding_window) if getattr(cfg, "use_sliding_window", False) and cfg.sliding_window else -1
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else 0
        return cls(
            layers=cfg.num_hidden_layers,
            hidden=cfg.hidden_size,
            heads=cfg.num_attention_heads,
            kv_heads=cfg.num_key_value_heads,
            head_dim=D,
            vocab=cfg.vocab_size,
            rope_theta=float(theta),
            eps=float(cfg.rms_norm_eps),
            window=window,
            model_type=cfg.model_type,
            bos=cfg.bos_token_id if cfg.bos_token_id is not None else 0,
            eos=eos,
            pad=cfg.pad_token_id if cfg.pad_token_id is not None else eos,
        )


class _Graph:
    """Nodes and initializers being written; weights by name in Hugging Face's state-dict naming."""

    def __init__(self, weights: Mapping[str, np.ndarray]):
        self.weights, self.inits, self.nodes = weights, [], []

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def weight(self, name: str, array: np.ndarray) -> str:
        return self.const(name, np.asarray(array, dtype=np.float32))

    def node(self, op: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        self.nodes.append(helper.make_node(op, inputs, outputs, **attrs))

    def rms_norm(self, x: str, gamma: str, out: str, eps: float) -> None:
        self.node("SimplifiedLayerNormalization", [x, gamma], [out], axis=-1, epsilon=eps, stash_type=1)


def _inputs_and_rotary(g: _Graph, spec: DecoderSpec, max_length: int) -> str:
    """Token embedding, seqlens_k / total_sequence_length from attention_mask, rotary caches; returns h0."""
    inv = 1.0 / spec.rope_theta ** (np.arange(0, spec.head_dim, 2, dtype=np.float64) / spec.head_dim)
    angles = np.arange(max_length, dtype=np.float64)[:, None] * inv[None, :]
    g.weight("cos_cache", np.cos(angles))
    g.weight("sin_cache", np.sin(angles))
    g.const("axis1", np.array([1], np.int64))
    g.const("one", np.array(1, np.int64))
    g.node("Gather", [g.weight("embed_tokens", g.weights["model.embed_tokens.weight"]), "input_ids"], ["h0"])
    g.node("ReduceSum", ["attention_mask", "axis1"], ["mask_sum"], keepdims=0)
    g.node("Sub", ["mask_sum", "one"], ["seqlens_i64"])
    g.node("Cast", ["seqlens_i64"], ["seqlens_k"], to=TensorProto.INT32)
    g.node("Shape", ["attention_mask"], ["mask_shape"])
    g.node("Gather", ["mask_shape", "one"], ["total_i64"], axis=0)
    g.node("Cast", ["total_i64"], ["total_sequence_length"], to=TensorProto.INT32)
    return "h0"


def _attention(g: _Graph, spec: DecoderSpec, i: int, x: str) -> str:
    """Norm, packed QKV (+ bias, Qwen2), GroupQueryAttention with rotary inside, o_proj, residual; returns h."""
    p = f"model.layers.{i}"
    w = lambda k: g.weights[f"{p}.{k}"]  # noqa: E731
    g.rms_norm(x, g.weight(f"{p}.ln1", w("input_layernorm.weight")), f"{p}.n1", spec.eps)
    proj = ("q_proj", "k_proj", "v_proj")
    qkv = np.concatenate([w(f"self_attn.{m}.weight") for m in proj])
    g.node("MatMul", [f"{p}.n1", g.weight(f"{p}.qkv", qkv.T)], [f"{p}.qkv_mm"])
    qkv_out = f"{p}.qkv_mm"
    if f"{p}.self_attn.q_proj.bias" in g.weights:
        bias = np.concatenate([w(f"self_attn.{m}.bias") for m in proj])
        g.node("Add", [qkv_out, g.weight(f"{p}.qkv_bias", bias)], [f"{p}.qkv_out"])
        qkv_out = f"{p}.qkv_out"
    past = [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
    g.node(
        "GroupQueryAttention",
        [qkv_out, "", "", *past, "seqlens_k", "total_sequence_length", "cos_cache", "sin_cache"],
        [f"{p}.attn", f"present.{i}.key", f"present.{i}.value"],
        domain="com.microsoft",
        name=f"{p}.GQA",
        num_heads=spec.heads,
        kv_num_heads=spec.kv_heads,
        scale=float(1 / np.sqrt(spec.head_dim)),
        local_window_size=spec.window,
        softcap=0.0,
        do_rotary=1,
        rotary_interleaved=spec.rotary_interleaved,
    )
    g.node("MatMul", [f"{p}.attn", g.weight(f"{p}.o", w("self_attn.o_proj.weight").T)], [f"{p}.o_out"])
    g.node("Add", [x, f"{p}.o_out"], [f"{p}.h"])
    return f"{p}.h"


def _mlp(g: _Graph, spec: DecoderSpec, i: int, h: str) -> str:
    """Norm, SiLU-gated MLP (gate * sigmoid(gate) * up, down), residual; returns the layer's output."""
    p = f"model.layers.{i}"
    w = lambda k: g.weights[f"{p}.{k}"]  # noqa: E731
    g.rms_norm(h, g.weight(f"{p}.ln2", w("post_attention_layernorm.weight")), f"{p}.n2", spec.eps)
    g.node("MatMul", [f"{p}.n2", g.weight(f"{p}.gate", w("mlp.gate_proj.weight").T)], [f"{p}.gate_out"])
    g.node("Sigmoid", [f"{p}.gate_out"], [f"{p}.gate_sig"])
    g.node("Mul", [f"{p}.gate_out", f"{p}.gate_sig"], [f"{p}.gate_silu"])
    g.node("MatMul", [f"{p}.n2", g.weight(f"{p}.up", w("mlp.up_proj.weight").T)], [f"{p}.up_out"])
    g.node("Mul", [f"{p}.gate_silu", f"{p}.up_out"], [f"{p}.act"])
    g.node("MatMul", [f"{p}.act", g.weight(f"{p}.down", w("mlp.down_proj.weight").T)], [f"{p}.down_out"])
    g.node("Add", [h, f"{p}.down_out"], [f"{p}.out"])
    return f"{p}.out"


def _lm_head(g: _Graph, spec: DecoderSpec, x: str) -> None:
    """Final norm and lm_head on the last position only (the builder's prune_lm_head); tied embeddings allowed."""
    g.const("last_start", np.array([-1], np.int64))
    g.const("last_end", np.array([np.iinfo(np.int64).max], np.int64))
    g.node("Slice", [x, "last_start", "last_end", "axis1"], ["h_last"])
    g.rms_norm("h_last", g.weight("model.norm", g.weights["model.norm.weight"]), "h_norm", spec.eps)
    lm_head = g.weights.get("lm_head.weight", g.weights["model.embed_tokens.weight"])
    g.node("MatMul", ["h_norm", g.weight("lm_head", np.asarray(lm_head).T)], ["logits"])


def _model(g: _Graph, spec: DecoderSpec) -> onnx.ModelProto:
    kv = lambda name, seq: helper.make_tensor_value_info(  # noqa: E731
        name, TensorProto.FLOAT, ["batch_size", spec.kv_heads, seq, spec.head_dim]
    )
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", 1, spec.vocab])]
    for i in range(spec.layers):
        inputs += [kv(f"past_key_values.{i}.{t}", "past_sequence_length") for t in ("key", "value")]
        outputs += [kv(f"present.{i}.{t}", "total_sequence_length") for t in ("key", "value")]
    graph = helper.make_graph(g.nodes, "genai_decoder", inputs, outputs, g.inits)
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    proto.ir_version = 10
    return proto


def _config(spec: DecoderSpec, max_length: int, threads: int | None) -> dict:
    """genai_config.json as the builder writes it (greedy search, past_present_share_buffer)."""
    session = {"log_id": "onnxruntime-genai", "provider_options": []}
    if threads is not None:
        session["intra_op_num_threads"] = threads
    decoder = {
        "session_options": session,
        "filename": "model.onnx",
        "head_size": spec.head_dim,
        "hidden_size": spec.hidden,
        "inputs": {
            "input_ids": "input_ids",
            "attention_mask": "attention_mask",
            "past_key_names": "past_key_values.%d.key",
            "past_value_names": "past_key_values.%d.value",
        },
        "outputs": {
            "logits": "logits",
            "present_key_names": "present.%d.key",
            "present_value_names": "present.%d.value",
        },
        "num_attention_heads": spec.heads,
        "num_hidden_layers": spec.layers,
        "num_key_value_heads": spec.kv_heads,
    }
    search = {
        "diversity_penalty": 0.0,
        "do_sample": False,
        "early_stopping": True,
        "length_penalty": 1.0,
        "max_length": max_length,
        "min_length": 0,
        "no_repeat_ngram_size": 0,
        "num_beams": 1,
        "num_return_sequences": 1,
        "past_present_share_buffer": True,
        "repetition_penalty": 1.0,
        "temperature": 1.0,
        "top_k": 1,
        "top_p": 1.0,
    }
    model = {
        "bos_token_id": spec.bos,
        "context_length": max_length,
        "decoder": decoder,
        "eos_token_id": spec.eos,
        "pad_token_id": spec.pad,
        "type": spec.model_type,
        "vocab_size": spec.vocab,
    }
    return {"model": model, "search": search}


def write_decoder(
    spec: DecoderSpec, weights: Mapping[str, np.ndarray], out_dir: Path, *, max_length: int, threads: int | None = None
) -> Path:
    """Writes model.onnx (+ model.onnx.data) and genai_config.json into out_dir from weights named as in a Hugging
    Face Llama/Qwen2 state dict (model.embed_tokens.weight, model.layers.{i}.self_attn.q_proj.weight [Hq*D, hidden],
    ..., model.norm.weight, optional lm_head.weight)."""
    g = _Graph(weights)
    x = _inputs_and_rotary(g, spec, max_length)
    for i in range(spec.layers):
        x = _mlp(g, spec, i, _attention(g, spec, i, x))
    _lm_head(g, spec, x)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(
        _model(g, spec),
        out_dir / "model.onnx",
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=1024,
    )
    (out_dir / "genai_config.json").write_text(json.dumps(_config(spec, max_length, threads), indent=4))
    return out_dir


def write(model, out_dir: Path, *, max_length: int, threads: int | None = None) -> Path:
    """The transformers model `model` (Llama / Qwen2 architecture) in genai's form: write_decoder of its weights."""
    weights = {k: v.detach().to("cpu").float().numpy() for k, v in model.state_dict().items()}
    return write_decoder(
        DecoderSpec.from_config(model.config), weights, out_dir, max_length=max_length, threads=threads
    )


def quantize_int4(src: Path, dst: Path, *, block_size: int = 32, accuracy_level: int = 4) -> Path:
    """The genai folder `src` with every constant-weight MatMul as com.microsoft.MatMulNBits (int4, symmetric,
    blocks of `block_size`; accuracy_level 4 = int8 activations on CPU), as the builder's `-p int4 -e cpu` does.
    Attention stays fp32 (GroupQueryAttention is untouched)."""
    import shutil

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src / "model.onnx"))
    quantizer = MatMulNBitsQuantizer(
        model, bits=4, block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level
    )
    quantizer.process()
    dst.mkdir(parents=True, exist_ok=True)
    onnx.save(
        quantizer.model.model,
        dst / "model.onnx",
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=1024,
    )
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy2(f, dst / f.name)
    return dst
