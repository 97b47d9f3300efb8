"""The model a batch job runs, and one document through it.

Three kinds of input, told apart by what the file holds:
- a decoder exported by `ice-export` (output last_hidden_state, `lm_head.npy` beside it; rewritten or not):
  per-document perplexity, the [S, V] logits formed in chunks and never held whole;
- an onnxruntime-genai model folder (genai_config.json; rewritten or not) whose decoder returns every position's
  logits (the builder's form): run by onnxruntime directly with an empty KV cache, logits [1, S, V] (S x V floats:
  keep --max-tokens modest for large vocabularies); a decoder returning the last position only is refused;
- an encoder (output last_hidden_state, no lm_head.npy; MiniLM): the mask-weighted mean of the last hidden state,
  L2-normalised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..metrics import logits_stats, nll_sum


class BatchError(Exception):
    """A job that cannot run (bad model, input or options); the message says why."""


class DocumentError(Exception):
    """One document that cannot be scored; it becomes an error row with this message."""


@dataclass(frozen=True)
class ModelSpec:
    path: str  # the ONNX file
    task: str  # "perplexity" | "embed"
    output: str  # "last_hidden_state" | "logits"
    inputs: tuple[str, ...]
    lm_head: str | None  # lm_head.npy of an ice-export decoder
    past: tuple[tuple[str, int, int], ...]  # genai: (input name, Hkv, D) of each past key/value input
    max_tokens: int | None  # from genai_config.json (context_length), else None


def inspect(model: str | Path) -> ModelSpec:
    """What `model` (an ONNX file or a genai folder) is, or a BatchError saying why it cannot be used."""
    path = Path(model)
    max_tokens = None
    if path.is_dir():
        config = path / "genai_config.json"
        if not config.is_file():
            raise BatchError(f"{path}: a folder without genai_config.json (pass an ONNX file or a genai model folder)")
        try:
            cfg = json.loads(config.read_text())
            path = path / cfg["model"]["decoder"]["filename"]
            max_tokens = int(cfg["model"].get("context_length") or 0) or None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BatchError(
                f"{config}: not a genai config with model.decoder.filename ({type(e).__name__}: {e})"
            ) from e
    if not path.is_file():
        raise BatchError(f"{path}: no such model file")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as e:
        raise BatchError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    inputs = tuple(i.name for i in proto.graph.input)
    outputs = [o.name for o in proto.graph.output]
    if "input_ids" not in inputs:
        raise BatchError(f"{path}: no input_ids input (inputs: {', '.join(inputs)})")
    past = []
    for i in proto.graph.input:
        if i.name.startswith("past_key_values."):
            dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
            if len(dims) != 4 or dims[1] < 1 or dims[3] < 1:
                raise BatchError(f"{path}: past input {i.name} needs static [B, Hkv, P, D] dims with Hkv and D known")
            past.append((i.name, dims[1], dims[3]))
    lm_head = path.parent / "lm_head.npy"
    if "logits" in outputs:
        logits = next(o for o in proto.graph.output if o.name == "logits")
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in logits.type.tensor_type.shape.dim]
        if len(dims) == 3 and dims[1] == 1:
            raise BatchError(
                f"{path}: its logits are [B, 1, V], the last position only (ice-export's genai form "
                "writes that for generation); per-document perplexity needs every position: use the "
                "ice-export decoder of the same model (hidden states + lm_head.npy), rewritten"
            )
        return ModelSpec(str(path), "perplexity", "logits", inputs, None, tuple(past), max_tokens)
    if "last_hidden_state" not in outputs:
        raise BatchError(f"{path}: neither logits nor last_hidden_state among the outputs ({', '.join(outputs)})")
    if lm_head.is_file():
        return ModelSpec(str(path), "perplexity", "last_hidden_state", inputs, str(lm_head), (), max_tokens)
    return ModelSpec(str(path), "embed", "last_hidden_state", inputs, None, (), max_tokens)


class ModelRunner:
    """One session of the model (our library registered), in a worker."""

    def __init__(self, spec: ModelSpec, threads: int):
        import onnxruntime as ort

        from ..ops import session_options

        self.spec, self.threads = spec, threads
        self.session = ort.InferenceSession(spec.path, session_options(threads), providers=["CPUExecutionProvider"])
        self.lm_head = np.load(spec.lm_head, mmap_mode="r") if spec.lm_head else None

    def _feeds(self, ids: list[int]) -> dict[str, np.ndarray]:
        n = len(ids)
        feeds = {"input_ids": np.asarray([ids], np.int64)}
        for name in self.spec.inputs:
            if name == "attention_mask":
                feeds[name] = np.ones((1, n), np.int64)
            elif name == "token_type_ids":
                feeds[name] = np.zeros((1, n), np.int64)
            elif name == "position_ids":
                feeds[name] = np.arange(n, dtype=np.int64)[None]
        for name, hkv, d in self.spec.past:
            feeds[name] = np.zeros((1, hkv, 0, d), np.float32)
        return feeds

    def score(self, ids: list[int]) -> dict:
        """perplexity: {nll (sum over predicted tokens), scored (their count)}; embed: {embedding (unnormalised
        mean, float64), scored (tokens averaged)}."""
        (out,) = self.session.run([self.spec.output], self._feeds(ids))
        if self.spec.task == "embed":
            return {"embedding": out[0].astype(np.float64).mean(0), "scored": len(ids)}
        if self.spec.output == "logits":
            return {"nll": nll_sum(out[0, :-1].astype(np.float64), ids[1:]), "scored": len(ids) - 1}
        # The logits matmul runs in numpy's BLAS, whose sums depend on its thread count (OpenBLAS splits them
        # differently): held to the session's threads, the same settings give the same bits in any process (Ray
        # actors start with one BLAS thread per CPU, the serial mode in a process that may have more).
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=self.threads, user_api="blas"):
            nll, count, _ = logits_stats(out[0], self.lm_head, ids, 0)
        return {"nll": nll, "scored": count}
