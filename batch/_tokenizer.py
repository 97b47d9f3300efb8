"""Tokenization inside the workers: an ONNX tokenizer model made with onnxruntime-extensions
(`gen_processing_models`) from the Hugging Face tokenizer, so workers need onnxruntime and onnxruntime-extensions
but neither transformers nor torch. It is used only when its ids equal the Hugging Face tokenizer's on sample
documents of the corpus; otherwise the workers fall back to the Hugging Face tokenizer and the summary says why.

The converter (onnxruntime-extensions 0.15.2) reads tokenizer.json itself and expects merges as "a b" strings,
while current tokenizers write them as ["a", "b"] pairs ("'list' object has no attribute 'replace'"), and it picks
its op from the tokenizer's class name (a GGUF-converted byte-level BPE tokenizer calls itself Llama and gets the
SentencePiece op). So the input is fixed, never their code: a prepared copy of the tokenizer files with string
merges and, for byte-level BPE, the GPT-2 tokenizer class it is.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EDGE_TEXTS = ["", " leading space", "tabs\tand\n\nnew  lines", "héllo wörld 😀", "1234567 and 3.14159", "a" * 300]


@dataclass(frozen=True)
class TokenizerSpec:
    """What the workers build their tokenizer from."""

    onnx_model: bytes | None  # the ONNX tokenizer; None: the workers use hf_tokenizer
    hf_tokenizer: Any  # the Hugging Face tokenizer (pickled to the workers) when there is no ONNX one, else None
    add_special_tokens: bool  # what the reference tokenization does (BERT: [CLS] ... [SEP]; SmolLM2: nothing)
    note: str  # which tokenizer the workers use, and why


def _prepared_copy(hf_dir: Path, dst: Path) -> Path:
    for f in hf_dir.iterdir():
        if f.is_file() and (f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "vocab.txt")):
            shutil.copy(f, dst / f.name)
    tj_path, cfg_path = dst / "tokenizer.json", dst / "tokenizer_config.json"
    if not tj_path.is_file():
        return dst
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    model = tj.get("model", {})
    if model.get("type") == "BPE" and model.get("merges") and isinstance(model["merges"][0], list):
        model["merges"] = [" ".join(pair) for pair in model["merges"]]
    pre = tj.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if model.get("type") == "BPE" and any(s.get("type") == "ByteLevel" for s in steps if s):
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
        cfg["tokenizer_class"] = "GPT2Tokenizer"
        cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
        (dst / "tokenizer.model").unlink(missing_ok=True)  # a SentencePiece file would pick the wrong converter
    tj_path.write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    return dst


def build_spec(hf_tokenizer, hf_dir: str | Path, samples: list[str], add_special_tokens: bool = True) -> TokenizerSpec:
    """The workers' tokenizer for `hf_tokenizer` (loaded from `hf_dir`, with any fixes its recipe makes): the ONNX
    one when its ids equal `hf_tokenizer`'s on `samples` (and a few edge strings), else the Hugging Face one."""
    texts = [t for t in samples if isinstance(t, str)] + EDGE_TEXTS

    def fallback(why: str) -> TokenizerSpec:
        return TokenizerSpec(None, hf_tokenizer, add_special_tokens, f"Hugging Face tokenizer in the workers: {why}")

    try:
        from onnxruntime_extensions import gen_processing_models
        from transformers import AutoTokenizer

        with tempfile.TemporaryDirectory(prefix="ice-tok-") as tmp:
            prepared = AutoTokenizer.from_pretrained(_prepared_copy(Path(hf_dir), Path(tmp)))
            onnx_model = gen_processing_models(prepared, pre_kwargs={})[0].SerializeToString()
    except Exception as e:  # the converter's failures come in many types
        return fallback(f"onnxruntime-extensions cannot convert it ({type(e).__name__}: {e})")
    try:
        encode = Tokenizer(TokenizerSpec(onnx_model, None, add_special_tokens, ""))
    except Exception as e:
        return fallback(f"onnxruntime cannot load the converted tokenizer ({type(e).__name__}: {e})")
    for i, text in enumerate(texts):
        want = hf_tokenizer(text, add_special_tokens=add_special_tokens).input_ids
        try:
            got = encode(text)
        except Exception as e:
            return fallback(f"the ONNX tokenizer fails on sample text {i} ({type(e).__name__}: {e})")
        if got != want:
            at = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            return fallback(
                f"the ONNX tokenizer's ids differ from Hugging Face's on sample text {i} at token {at} "
                f"({len(got)} vs {len(want)} tokens)"
            )
    return TokenizerSpec(
        onnx_model,
        None,
        add_special_tokens,
        f"ONNX tokenizer (onnxruntime-extensions): ids equal Hugging Face's on {len(texts)} texts",
    )


class Tokenizer:
    """text -> ids, built in a worker from a TokenizerSpec."""

    def __init__(self, spec: TokenizerSpec):
        self.spec = spec
        if spec.onnx_model is not None:
            import onnxruntime as ort
            from onnxruntime_extensions import get_library_path

            so = ort.SessionOptions()
            so.register_custom_ops_library(get_library_path())
            so.intra_op_num_threads = 1
            self._session = ort.InferenceSession(spec.onnx_model, so, providers=["CPUExecutionProvider"])
            self._input = self._session.get_inputs()[0].name  # "input_text" or "text", by converter
            self._hf = None
        else:
            self._session = None
            self._hf = spec.hf_tokenizer

    def __call__(self, text: str) -> list[int]:
        if self._session is not None:
            return self._session.run(["input_ids"], {self._input: [text]})[0].ravel().tolist()
        return self._hf(text, add_special_tokens=self.spec.add_special_tokens).input_ids
