"""A tiny random-weight decoder in the form onnxruntime-genai's model builder writes for CPU fp32 (SmolLM2/Llama
builds, see ../shared/docs/peers.md): Gather embedding, SimplifiedLayerNormalization, one packed-QKV MatMul, a
com.microsoft.GroupQueryAttention node per layer (rotary inside, past/present KV, seqlens_k and
total_sequence_length computed from attention_mask), o_proj MatMul, SiLU MLP, residual adds, lm_head; plus the
genai_config.json the builder writes. Hand-built rather than built by the builder because the builder needs
transformers 5 while this project pins transformers < 4.58 (optimum-onnx); the graph has the same operators,
inputs, outputs and attributes as the builder's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(
    folder: Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 97,
    max_length: int = 256,
    window: int = -1,
    interleaved: int = 0,
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    D = hidden // heads
    f = np.float32
    inits, nodes = [], []

    def w(name, shape, scale=0.2):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(f), name))
        return name

    n = helper.make_node
    inv = 1.0 / (10000 ** (np.arange(0, D, 2) / D))
    ang = np.arange(max_length)[:, None] * inv[None, :]
    inits += [
        numpy_helper.from_array(np.cos(ang).astype(f), "cos_cache"),
        numpy_helper.from_array(np.sin(ang).astype(f), "sin_cache"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(1, np.int64), "one_i64"),
    ]
    nodes += [
        n("Gather", [w("embed", (vocab, hidden), 1.0), "input_ids"], ["x0"]),
        n("ReduceSum", ["attention_mask", "axis1"], ["mask_sum"], keepdims=0),
        n("Sub", ["mask_sum", "one_i64"], ["seqlens_i64"]),
        n("Cast", ["seqlens_i64"], ["seqlens_k"], to=TensorProto.INT32),
        n("Shape", ["attention_mask"], ["mask_shape"]),
        n("Gather", ["mask_shape", "one_i64"], ["total_i64"], axis=0),
        n("Cast", ["total_i64"], ["total_sequence_length"], to=TensorProto.INT32),
    ]
    x = "x0"
    for i in range(layers):
        p = f"l{i}"
        nodes += [
            n("SimplifiedLayerNormalization", [x, w(f"{p}_ln1", (hidden,), 0.1)], [f"{p}_n1"], axis=-1, epsilon=1e-5),
            n("MatMul", [f"{p}_n1", w(f"{p}_qkv", (hidden, (heads + 2 * kv_heads) * D))], [f"{p}_qkv_out"]),
            n(
                "GroupQueryAttention",
                [
                    f"{p}_qkv_out",
                    "",
                    "",
                    f"past_key_values.{i}.key",
                    f"past_key_values.{i}.value",
                    "seqlens_k",
                    "total_sequence_length",
                    "cos_cache",
                    "sin_cache",
                ],
                [f"{p}_attn", f"present.{i}.key", f"present.{i}.value"],
                domain="com.microsoft",
                name=f"{p}_GQA",
                num_heads=heads,
                kv_num_heads=kv_heads,
                scale=float(1 / np.sqrt(D)),
                local_window_size=window,
                softcap=0.0,
                do_rotary=1,
                rotary_interleaved=interleaved,
            ),
            n("MatMul", [f"{p}_attn", w(f"{p}_o", (heads * D, hidden))], [f"{p}_o_out"]),
            n("Add", [x, f"{p}_o_out"], [f"{p}_h"]),
            n(
                "SimplifiedLayerNormalization",
                [f"{p}_h", w(f"{p}_ln2", (hidden,), 0.1)],
                [f"{p}_n2"],
                axis=-1,
                epsilon=1e-5,
            ),
            n("MatMul", [f"{p}_n2", w(f"{p}_up", (hidden, 2 * hidden))], [f"{p}_up_out"]),
            n("Sigmoid", [f"{p}_up_out"], [f"{p}_sig"]),
            n("Mul", [f"{p}_up_out", f"{p}_sig"], [f"{p}_silu"]),
            n("MatMul", [f"{p}_silu", w(f"{p}_down", (2 * hidden, hidden))], [f"{p}_down_out"]),
            n("Add", [f"{p}_h", f"{p}_down_out"], [f"{p}_out"]),
        ]
        x = f"{p}_out"
    nodes += [
        n("SimplifiedLayerNormalization", [x, w("ln_f", (hidden,), 0.1)], ["xf"], axis=-1, epsilon=1e-5),
        n("MatMul", ["xf", w("lm_head", (hidden, vocab), 1.0)], ["logits"]),
    ]
    kv = lambda name, seq: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch_size", kv_heads, seq, D])  # noqa: E731
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", vocab])]
    for i in range(layers):
        inputs += [
            kv(f"past_key_values.{i}.key", "past_sequence_length"),
            kv(f"past_key_values.{i}.value", "past_sequence_length"),
        ]
        outputs += [kv(f"present.{i}.key", "total_sequence_length"), kv(f"present.{i}.value", "total_sequence_length")]
    graph = helper.make_graph(nodes, "genai_tiny", inputs, outputs, inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    config = {
        "model": {
            "bos_token_id": 1,
            "eos_token_id": vocab - 1,
            "pad_token_id": 0,
            "context_length": max_length,
            "type": "llama",
            "vocab_size": vocab,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": [], "intra_op_num_threads": 2},
                "filename": "model.onnx",
                "head_size": D,
                "hidden_size": hidden,
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
                "num_attention_heads": heads,
                "num_hidden_layers": layers,
                "num_key_value_heads": kv_heads,
            },
        },
        "search": {
            "do_sample": False,
            "max_length": max_length,
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": True,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
            "early_stopping": True,
            "length_penalty": 1.0,
            "no_repeat_ngram_size": 0,
            "diversity_penalty": 0.0,
        },
    }
    (folder / "genai_config.json").write_text(json.dumps(config, indent=2))
    (folder / "notes.txt").write_text("an extra file the rewriter must copy\n")
    return folder


def generate(folder: Path, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Greedy generation with onnxruntime-genai, a batch of prompts (padded by genai), token ids in and out."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    longest = max(len(p) for p in prompts)
    params.set_search_options(max_length=longest + new_tokens, batch_size=len(prompts), do_sample=False)
    gen = og.Generator(model, params)
    pad = 0
    ids = np.array([p + [pad] * (longest - len(p)) for p in prompts], np.int32)
    gen.append_tokens(ids if len(prompts) > 1 else ids[0])
    while not gen.is_done():
        gen.generate_next_token()
    return [list(gen.get_sequence(b)) for b in range(len(prompts))]
