"""Capture real post-RoPE Q, K and V of SmolLM2-135M on Brown-corpus text (for tests and tuning).

  ice-capture-qk out.npz --tokens 2048 --layers 0 13 24 --kv-heads 0

Saves float16 arrays Q [layers, Hq_sel, T, D], K and V [layers, Hkv_sel, T, D] (query heads of the selected
KV heads only), plus `layers`, `kv_heads`, `group`. tools/data/smollm2_qkv_2048.npz (shipped for tests and the demo) was made with the line above.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager

import numpy as np


@contextmanager
def _recording(model):
    """Records (q, k) after RoPE and v of every decoder layer, in call order."""
    import transformers.models.llama.modeling_llama as ml

    qk, vs, hooks = [], [], []
    original = ml.apply_rotary_pos_emb

    def rope(q, k, cos, sin, *a, **kw):
        q2, k2 = original(q, k, cos, sin, *a, **kw)
        qk.append((q2.detach(), k2.detach()))
        return q2, k2

    for layer in model.model.layers:
        attn = layer.self_attn
        hooks.append(attn.v_proj.register_forward_hook(lambda m, i, o: vs.append(o.detach())))
    ml.apply_rotary_pos_emb = rope
    try:
        yield qk, vs
    finally:
        ml.apply_rotary_pos_emb = original
        for h in hooks:
            h.remove()


def capture(tokens: int, layers: list[int] | None, kv_heads: list[int] | None, text_start: int = 0):
    import torch

    from ..models import corpus, smollm2

    model, tok = smollm2.load("sdpa")  # the recording hook sits in RoPE, which every implementation calls
    ids = tok(corpus.brown_text(start=text_start, count=40)).input_ids[:tokens]
    if len(ids) < tokens:
        raise RuntimeError(f"only {len(ids)} tokens of text available")
    cfg = model.config
    hq, hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    group = hq // hkv
    layers = list(range(cfg.num_hidden_layers)) if layers is None else layers
    kv_heads = list(range(hkv)) if kv_heads is None else kv_heads
    qsel = [h * group + g for h in kv_heads for g in range(group)]
    with torch.no_grad(), _recording(model) as (qk, vs):
        model(torch.tensor([ids]))
    Q = np.stack([qk[l][0][0, qsel].numpy() for l in layers])
    K = np.stack([qk[l][1][0, kv_heads].numpy() for l in layers])
    V = np.stack([vs[l][0].reshape(tokens, hkv, d).permute(1, 0, 2)[kv_heads].numpy() for l in layers])
    return {"Q": Q, "K": K, "V": V, "layers": np.array(layers), "kv_heads": np.array(kv_heads), "group": np.array(group)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="ice-capture-qk", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--layers", type=int, nargs="*", default=None, help="default: all")
    ap.add_argument("--kv-heads", type=int, nargs="*", default=None, help="default: all")
    ap.add_argument("--float32", action="store_true", help="keep float32 (default float16, for small fixtures)")
    args = ap.parse_args(argv)
    arrays = capture(args.tokens, args.layers, args.kv_heads)
    if not args.float32:
        for k in ("Q", "K", "V"):
            arrays[k] = arrays[k].astype(np.float16)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
