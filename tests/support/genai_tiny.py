"""Tiny random-weight decoders in onnxruntime-genai's form, written by iceformer.models.genai_form (the same writer
as `ice-export --form genai`, the builder's graph: packed QKV, com.microsoft.GroupQueryAttention with rotary
inside, a shared past/present buffer), and greedy generation through onnxruntime-genai."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from iceformer.models.genai_form import DecoderSpec, write_decoder


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
    """A genai folder with seeded random weights (and notes.txt, an extra file the rewriter must copy)."""
    rng = np.random.default_rng(seed)
    D, inner = hidden // heads, 2 * hidden
    w = lambda *shape, scale=0.2: (rng.standard_normal(shape) * scale).astype(np.float32)  # noqa: E731
    norm = lambda: (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)  # noqa: E731
    weights = {"model.embed_tokens.weight": w(vocab, hidden, scale=1.0), "model.norm.weight": norm()}
    for i in range(layers):
        p = f"model.layers.{i}"
        weights |= {
            f"{p}.input_layernorm.weight": norm(),
            f"{p}.self_attn.q_proj.weight": w(heads * D, hidden),
            f"{p}.self_attn.k_proj.weight": w(kv_heads * D, hidden),
            f"{p}.self_attn.v_proj.weight": w(kv_heads * D, hidden),
            f"{p}.self_attn.o_proj.weight": w(hidden, heads * D),
            f"{p}.post_attention_layernorm.weight": norm(),
            f"{p}.mlp.gate_proj.weight": w(inner, hidden),
            f"{p}.mlp.up_proj.weight": w(inner, hidden),
            f"{p}.mlp.down_proj.weight": w(hidden, inner),
        }
    spec = DecoderSpec(
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=D,
        vocab=vocab,
        window=window,
        rotary_interleaved=interleaved,
        bos=1,
        eos=vocab - 1,
    )
    write_decoder(spec, weights, folder, max_length=max_length, threads=2)
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
