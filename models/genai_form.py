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
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _np(t) -> np.ndarray:
    return t.detach().to("cpu").float().numpy()


def write(model, out_dir: Path, *, max_length: int, threads: int | None = None) -> Path:
    """Writes model.onnx (+ model.onnx.data) and genai_config.json for the transformers model `model` into out_dir."""
    cfg = model.config
    H, Hq, Hkv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or H // Hq
    sd = model.state_dict()
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    n = helper.make_node

    def weight(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    theta = float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"])
    inv = 1.0 / theta ** (np.arange(0, D, 2, dtype=np.float64) / D)
    angles = np.arange(max_length, dtype=np.float64)[:, None] * inv[None, :]
    weight("cos_cache", np.cos(angles))
    weight("sin_cache", np.sin(angles))
    inits += [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array([-1], np.int64), "last_start"),
        numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), "last_end"),
    ]
    eps = float(cfg.rms_norm_eps)
    nodes += [
        n("Gather", [weight("embed_tokens", _np(sd["model.embed_tokens.weight"])), "input_ids"], ["h0"]),
        n("ReduceSum", ["attention_mask", "axis1"], ["mask_sum"], keepdims=0),
        n("Sub", ["mask_sum", "one"], ["seqlens_i64"]),
        n("Cast", ["seqlens_i64"], ["seqlens_k"], to=TensorProto.INT32),
        n("Shape", ["attention_mask"], ["mask_shape"]),
        n("Gather", ["mask_shape", "one"], ["total_i64"], axis=0),
        n("Cast", ["total_i64"], ["total_sequence_length"], to=TensorProto.INT32),
    ]
    x = "h0"
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}"
        w = lambda k, p=p: _np(sd[f"{p}.{k}"])  # noqa: E731
        qkv = np.concatenate([w("self_attn.q_proj.weight"), w("self_attn.k_proj.weight"), w("self_attn.v_proj.weight")])
        nodes += [
            n(
                "SimplifiedLayerNormalization",
                [x, weight(f"{p}.ln1", w("input_layernorm.weight"))],
                [f"{p}.n1"],
                axis=-1,
                epsilon=eps,
                stash_type=1,
            ),
            n("MatMul", [f"{p}.n1", weight(f"{p}.qkv", qkv.T)], [f"{p}.qkv_mm"]),
        ]
        qkv_out = f"{p}.qkv_mm"
        if f"{p}.self_attn.q_proj.bias" in sd:  # Qwen2
            bias = np.concatenate([w("self_attn.q_proj.bias"), w("self_attn.k_proj.bias"), w("self_attn.v_proj.bias")])
            nodes.append(n("Add", [qkv_out, weight(f"{p}.qkv_bias", bias)], [f"{p}.qkv_out"]))
            qkv_out = f"{p}.qkv_out"
        window = int(cfg.sliding_window) if getattr(cfg, "use_sliding_window", False) and cfg.sliding_window else -1
        nodes += [
            n(
                "GroupQueryAttention",
                [
                    qkv_out,
                    "",
                    "",
                    f"past_key_values.{i}.key",
                    f"past_key_values.{i}.value",
                    "seqlens_k",
                    "total_sequence_length",
                    "cos_cache",
                    "sin_cache",
                ],
                [f"{p}.attn", f"present.{i}.key", f"present.{i}.value"],
                domain="com.microsoft",
                name=f"{p}.GQA",
                num_heads=Hq,
                kv_num_heads=Hkv,
                scale=float(1 / np.sqrt(D)),
                local_window_size=window,
                softcap=0.0,
                do_rotary=1,
                rotary_interleaved=0,
            ),
            n("MatMul", [f"{p}.attn", weight(f"{p}.o", w("self_attn.o_proj.weight").T)], [f"{p}.o_out"]),
            n("Add", [x, f"{p}.o_out"], [f"{p}.h"]),
            n(
                "SimplifiedLayerNormalization",
                [f"{p}.h", weight(f"{p}.ln2", w("post_attention_layernorm.weight"))],
                [f"{p}.n2"],
                axis=-1,
                epsilon=eps,
                stash_type=1,
            ),
            n("MatMul", [f"{p}.n2", weight(f"{p}.gate", w("mlp.gate_proj.weight").T)], [f"{p}.gate_out"]),
            n("Sigmoid", [f"{p}.gate_out"], [f"{p}.gate_sig"]),
            n("Mul", [f"{p}.gate_out", f"{p}.gate_sig"], [f"{p}.gate_silu"]),
            n("MatMul", [f"{p}.n2", weight(f"{p}.up", w("mlp.up_proj.weight").T)], [f"{p}.up_out"]),
            n("Mul", [f"{p}.gate_silu", f"{p}.up_out"], [f"{p}.act"]),
            n("MatMul", [f"{p}.act", weight(f"{p}.down", w("mlp.down_proj.weight").T)], [f"{p}.down_out"]),
            n("Add", [f"{p}.h", f"{p}.down_out"], [f"{p}.out"]),
        ]
        x = f"{p}.out"
    lm_head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    nodes += [
        n("Slice", [x, "last_start", "last_end", "axis1"], ["h_last"]),  # prune_lm_head: the last position only
        n(
            "SimplifiedLayerNormalization",
            ["h_last", weight("model.norm", _np(sd["model.norm.weight"]))],
            ["h_norm"],
            axis=-1,
            epsilon=eps,
            stash_type=1,
        ),
        n("MatMul", ["h_norm", weight("lm_head", _np(lm_head).T)], ["logits"]),
    ]
    kv = lambda name, seq: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch_size", Hkv, seq, D])  # noqa: E731
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", 1, cfg.vocab_size])]
    for i in range(cfg.num_hidden_layers):
        inputs += [
            kv(f"past_key_values.{i}.key", "past_sequence_length"),
            kv(f"past_key_values.{i}.value", "past_sequence_length"),
        ]
        outputs += [kv(f"present.{i}.key", "total_sequence_length"), kv(f"present.{i}.value", "total_sequence_length")]
    graph = helper.make_graph(nodes, "genai_decoder", inputs, outputs, inits)
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    proto.ir_version = 10
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(
        proto, out_dir / "model.onnx", save_as_external_data=True, location="model.onnx.data", size_threshold=1024
    )
    session = {"log_id": "onnxruntime-genai", "provider_options": []}
    if threads is not None:
        session["intra_op_num_threads"] = threads
    eos = cfg.eos_token_id if cfg.eos_token_id is not None else 0
    config = {
        "model": {
            "bos_token_id": cfg.bos_token_id if cfg.bos_token_id is not None else 0,
            "context_length": max_length,
            "decoder": {
                "session_options": session,
                "filename": "model.onnx",
                "head_size": D,
                "hidden_size": H,
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
                "num_attention_heads": Hq,
                "num_hidden_layers": cfg.num_hidden_layers,
                "num_key_value_heads": Hkv,
            },
            "eos_token_id": eos,
            "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None else eos,
            "type": cfg.model_type,
            "vocab_size": cfg.vocab_size,
        },
        "search": {
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
        },
    }
    (out_dir / "genai_config.json").write_text(json.dumps(config, indent=4))
    return out_dir


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
