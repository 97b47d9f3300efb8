"""Capture real post-RoPE Q, K and V of a pretrained decoder on Brown-corpus text (for tests and tuning).

  ice-capture-qk out.npz --tokens 2048 --layers 0 13 24 --kv-heads 0
  ice-capture-qk qwen32k.npz --model qwen2.5-coder-0.5b --tokens 32768 --layers 2 12 22 --float32

Saves float16 arrays Q [layers, Hq_sel, T, D], K and V [layers, Hkv_sel, T, D] (query heads of the selected
KV heads only), plus `layers`, `kv_heads`, `group`. tools/data/smollm2_qkv_2048.npz (shipped for tests and ice-eval-knn) was made with the line above.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager, suppress

import numpy as np

MODELS = ("smollm2", "qwen2.5-coder-0.5b")


class _Done(Exception):
    """Raised after the last selected layer: the rest of the forward pass is not needed."""


@contextmanager
def _recording(model, layers: list[int]):
    """Records (q, k) after RoPE and v of the selected decoder layers (by layer index), and stops the forward
    pass after the last of them. The hook sits in the modelling module's apply_rotary_pos_emb, which every
    attention implementation of Llama-like models (SmolLM2, Qwen2) calls."""
    ml = sys.modules[type(model.model.layers[0].self_attn).__module__]
    wanted, last = set(layers), max(layers)
    qk, vs, hooks = {}, {}, []
    calls = [0]
    original = ml.apply_rotary_pos_emb

    def rope(q, k, cos, sin, *a, **kw):
        q2, k2 = original(q, k, cos, sin, *a, **kw)
        layer = calls[0]
        calls[0] += 1
        if layer in wanted:
            qk[layer] = (q2.detach(), k2.detach())
        return q2, k2

    def on_v(index):
        def hook(module, inputs, output):
            if index in wanted:
                vs[index] = output.detach()

        return hook

    def stop(module, inputs, output):
        raise _Done

    for index, layer in enumerate(model.model.layers):
        hooks.append(layer.self_attn.v_proj.register_forward_hook(on_v(index)))
    hooks.append(model.model.layers[last].register_forward_hook(stop))
    ml.apply_rotary_pos_emb = rope
    try:
        yield qk, vs
    finally:
        ml.apply_rotary_pos_emb = original
        for h in hooks:
            h.remove()


def capture(
    tokens: int, layers: list[int] | None, kv_heads: list[int] | None, text_start: int = 0, model_name: str = "smollm2"
):
    import torch

    from ..models import corpus, qwen, smollm2

    module = {"smollm2": smollm2, "qwen2.5-coder-0.5b": qwen}[model_name]
    model, tok = module.load("sdpa")  # the recording hook sits in RoPE, which every implementation calls
    count = 40 * max(1, -(-tokens // 65536))  # 40 Brown samples hold ~90k tokens
    ids = tok(corpus.brown_text(start=text_start, count=count)).input_ids[:tokens]
    if len(ids) < tokens:
        raise RuntimeError(f"only {len(ids)} tokens of text available")
    cfg = model.config
    hq, hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    group = hq // hkv
    layers = list(range(cfg.num_hidden_layers)) if layers is None else layers
    kv_heads = list(range(hkv)) if kv_heads is None else kv_heads
    qsel = [h * group + g for h in kv_heads for g in range(group)]
    with torch.no_grad(), _recording(model, layers) as (qk, vs), suppress(_Done):
        model.model(torch.tensor([ids]))  # hidden states only: never [T, vocab] logits
    Q = np.stack([qk[i][0][0, qsel].numpy() for i in layers])
    K = np.stack([qk[i][1][0, kv_heads].numpy() for i in layers])
    V = np.stack([vs[i][0].reshape(tokens, hkv, d).permute(1, 0, 2)[kv_heads].numpy() for i in layers])
    return {
        "Q": Q,
        "K": K,
        "V": V,
        "layers": np.array(layers),
        "kv_heads": np.array(kv_heads),
        "group": np.array(group),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="ice-capture-qk", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("out")
    ap.add_argument("--model", choices=MODELS, default="smollm2")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--layers", type=int, nargs="*", default=None, help="default: all")
    ap.add_argument("--kv-heads", type=int, nargs="*", default=None, help="default: all")
    ap.add_argument("--float32", action="store_true", help="keep float32 (default float16, for small fixtures)")
    args = ap.parse_args(argv)
    arrays = capture(args.tokens, args.layers, args.kv_heads, model_name=args.model)
    if not args.float32:
        for k in ("Q", "K", "V"):
            arrays[k] = arrays[k].astype(np.float16)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
