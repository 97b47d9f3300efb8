"""The KnnAttention op contract, stated once.

The rewriter, the numpy reference, the README table and the C++ registration check (tests) all derive
from these tables. Shape letters: B batch, Hq query heads, Hkv key/value heads, S queries, T keys,
D head dim, Dv value dim.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

DOMAIN = "iceformer"
OP_TYPE = "KnnAttention"
VERSION = 1
# Float attn_mask values at or below this count as masked (exporters fill with the float minimum, not -inf); the
# C++ side states the same as kMaskedBelow (masking.h).
MASKED_AT_OR_BELOW = -1e30
# An attn_mask of exactly one float 0.0 means "no mask": the rewriter passes it (and a [B,T] key_padding_mask of
# ones) so that the model-local reference function always sees all five inputs; the op treats it as absent (the
# C++ side: is_no_mask, masking.h).
NO_MASK_VALUE = 0.0


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[str, ...]
    dtypes: tuple[str, ...]
    optional: bool
    doc: str


@dataclass(frozen=True)
class AttrSpec:
    name: str
    type: str  # "int" | "float" | "ints" (a list, one value per query head; default empty: not given)
    default: int | float | tuple | None  # None: derived at run time
    doc: str


INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("Q", ("B", "Hq", "S", "D"), ("float",), False, "queries"),
    TensorSpec("K", ("B", "Hkv", "T", "D"), ("float",), False, "keys; query head h uses KV head h // (Hq/Hkv)"),
    TensorSpec("V", ("B", "Hkv", "T", "Dv"), ("float",), False, "values"),
    TensorSpec(
        "attn_mask",
        ("B", "Hq", "S", "T"),
        ("bool", "float"),
        True,
        "broadcastable (right-aligned, rank 1-4); bool: true = attend; float: added to the scaled logits; one float "
        "0.0: no mask (the rewriter's placeholder, NO_MASK_VALUE)",
    ),
    TensorSpec(
        "key_padding_mask",
        ("B", "T"),
        ("bool", "int32", "int64"),
        True,
        "nonzero = a real key; the O(T) way to express padding",
    ),
)

OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec(
        "Y", ("B", "Hq", "S", "Dv"), ("float",), False, "attention output; a query with no visible key gives zeros"
    ),
)

ATTRIBUTES: tuple[AttrSpec, ...] = (
    AttrSpec("is_causal", "int", 0, "1: query i sees keys j <= i + T - S (bottom-right aligned, K = cache + new keys)"),
    AttrSpec(
        "local_window_size",
        "int",
        -1,
        "hard sliding window, as GroupQueryAttention's: query i sees only keys j > i + T - S - local_window_size "
        "(the local_window_size positions ending at its own; Hugging Face's sliding_window); -1: none; every path "
        "honours it",
    ),
    AttrSpec("scale", "float", None, "logit scale; absent: 1/sqrt(D)"),
    AttrSpec(
        "top_k",
        "int",
        128,
        "keys retrieved per query by k-NN search (the floor of the candidate budget); 0 or >= visible keys: exact attention",
    ),
    AttrSpec(
        "search",
        "int",
        0,
        "0: low-rank scoring, each query attends the union of the keys retrieved by its block of 64 queries "
        "(default); 1: Prioritized DCI walk, each query its own top_k",
    ),
    AttrSpec(
        "rank",
        "int",
        32,
        "low-rank scoring: rank of the approximate logits (Q A)(K X)^T fitted to the queries and keys (top eigenvectors of Gq Gk)",
    ),
    AttrSpec("L", "int", 4, "composite indices of Prioritized DCI"),
    AttrSpec("m", "int", 2, "simple indices (random directions) per composite index"),
    AttrSpec(
        "max_candidates",
        "int",
        256,
        "candidate budget per query: low-rank retrieves about max(top_k, this) keys; DCI scores this many and keeps top_k (0: no absolute cap)",
    ),
    AttrSpec("candidate_fraction", "float", 0.0, "cap on candidates as a fraction of the visible keys (0: unused)"),
    AttrSpec(
        "min_keys",
        "int",
        4096,
        "queries seeing fewer keys than this attend to every key (with `search` 0, P V in the precision of the rest)",
    ),
    AttrSpec(
        "decode_min_keys",
        "int",
        24576,
        "decode steps (S < 32) whose row group sees at least this many cached keys retrieve them from a persistent index of the cache (k-NN decode); fewer: flash decoding over every key",
    ),
    AttrSpec(
        "local_window",
        "int",
        64,
        "keys last(i) - local_window < j <= last(i) (last key causality and attn_mask allow), always attended",
    ),
    AttrSpec("num_sink", "int", 4, "keys j < num_sink, always attended (if visible)"),
    AttrSpec(
        "tail_samples",
        "int",
        1024,
        "systematic sample of positions (one per query block for low-rank search) estimating the softmax mass of unretrieved keys",
    ),
    AttrSpec(
        "tail_limit",
        "float",
        0.5,
        "rows whose tail estimate holds more than this share of the softmax mass are recomputed exactly (1: never)",
    ),
    AttrSpec("seed", "int", 0, "seed of the random directions and tail samples"),
    AttrSpec(
        "auto_window",
        "int",
        2048,
        "prompts (S >= 32) of nodes without head_windows probe each query head on 16 of its k-NN rows: a head whose "
        "probe rows lose at most auto_window_error (mean relative output error) when they attend only the num_sink "
        "first keys and the auto_window keys ending at them streams for the call, as head_windows would make it; "
        "0: no probe",
    ),
    AttrSpec(
        "auto_window_error",
        "float",
        0.01,
        "the probe's tolerance (auto_window): mean relative output error of a head's probe rows over their window",
    ),
    AttrSpec(
        "head_budgets",
        "ints",
        (),
        "per query head (Hq values): keys retrieved per query by its k-NN rows, in place of top_k / max_candidates / "
        "candidate_fraction (0: the head attends to every key); k-NN decode gives a group of heads sharing a KV head "
        "the largest of theirs (exact if one is 0); written by ice-calibrate",
    ),
    AttrSpec(
        "head_tail_samples",
        "ints",
        (),
        "per query head (Hq values): its tail_samples (k-NN decode: the group's largest)",
    ),
    AttrSpec(
        "head_windows",
        "ints",
        (),
        "per query head (Hq values): w > 0 makes it a streaming head: its k-NN rows attend the num_sink first keys and "
        "the w keys ending at their query block, exactly, with no retrieval and no tail estimate (its head_budgets and "
        "head_tail_samples values are unused); 0: it retrieves. k-NN decode streams a group of heads sharing a KV "
        "head only when all of them stream (the largest window); written by ice-calibrate",
    ),
)


# ---- GroupQueryAttention: com.microsoft.GroupQueryAttention's contract (the CPU subset genai's builder emits), then
# KnnAttention's k-NN attributes with the same meaning and defaults. Shape letters as above; P cached rows before the
# call, T' present rows (max(total_sequence_length, P): past and present may be one buffer), R rotary cache rows, r
# rotary dims (<= D).
GQA_OP_TYPE = "GroupQueryAttention"

GQA_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec(
        "query",
        ("B", "S", "Hq*D"),
        ("float",),
        False,
        "queries; packed QKV [B,S,(Hq+2*Hkv)*D] when key and value are absent",
    ),
    TensorSpec("key", ("B", "S", "Hkv*D"), ("float",), True, "new keys (before rotary)"),
    TensorSpec("value", ("B", "S", "Hkv*D"), ("float",), True, "new values"),
    TensorSpec(
        "past_key",
        ("B", "Hkv", "P", "D"),
        ("float",),
        True,
        "KV cache; the same buffer as present_key when past and present are shared (only new rows are written)",
    ),
    TensorSpec("past_value", ("B", "Hkv", "P", "D"), ("float",), True, "as past_key"),
    TensorSpec("seqlens_k", ("B",), ("int32",), False, "L_b - 1: valid keys per batch row after this call, minus one"),
    TensorSpec(
        "total_sequence_length",
        ("1",),
        ("int32",),
        False,
        "max_b L_b; S = total on a call with S > 1 marks the first prompt (right padding, no past)",
    ),
    TensorSpec("cos_cache", ("R", "r/2"), ("float",), True, "rotary cosines by position (do_rotary = 1)"),
    TensorSpec("sin_cache", ("R", "r/2"), ("float",), True, "rotary sines by position (do_rotary = 1)"),
)
GQA_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("output", ("B", "S", "Hq*D"), ("float",), False, "attention output"),
    TensorSpec(
        "present_key",
        ("B", "Hkv", "T'", "D"),
        ("float",),
        True,
        "cache after this call (rows >= L_b: zeros or untouched)",
    ),
    TensorSpec("present_value", ("B", "Hkv", "T'", "D"), ("float",), True, "as present_key"),
)
# Inputs ORT's GroupQueryAttention has after these and output output_qk: refused at session creation, by name.
GQA_REFUSED_INPUTS = (
    "position_ids",
    "attention_bias",
    "head_sink",
    "k_scale",
    "v_scale",
    "q_norm_weight",
    "k_norm_weight",
    "query_seqlens",
)
KNN_ATTRIBUTES = tuple(a for a in ATTRIBUTES if a.name not in ("is_causal", "scale", "local_window_size"))
# The scalar ones (the per-head lists are the last two).
KNN_SCALAR_ATTRIBUTES = tuple(a for a in KNN_ATTRIBUTES if a.type != "ints")
GQA_ATTRIBUTES: tuple[AttrSpec, ...] = (
    AttrSpec("num_heads", "int", None, "Hq (required)"),
    AttrSpec("kv_num_heads", "int", None, "Hkv (required; Hq a multiple of it)"),
    AttrSpec("scale", "float", 0.0, "logit scale; 0: 1/sqrt(D)"),
    AttrSpec("softcap", "float", 0.0, "> 0: logits s -> softcap * tanh(s / softcap) (such calls run exact)"),
    AttrSpec(
        "local_window_size",
        "int",
        -1,
        "as KnnAttention's: each query sees the local_window_size positions ending at its own; -1: none",
    ),
    AttrSpec("do_rotary", "int", 0, "1: rotary embedding of the new queries and keys at their positions"),
    AttrSpec("rotary_interleaved", "int", 0, "1: rotate pairs (2i, 2i+1); 0: pairs (i, i + r/2)"),
    AttrSpec("causal", "int", 1, "1: query s of batch row b (position P_b + s) sees keys j <= P_b + s"),
    AttrSpec("smooth_softmax", "int", 0, "must be 0 (refused otherwise)"),
    AttrSpec("qk_output", "int", 0, "must be 0 (refused otherwise)"),
    AttrSpec("sliding_window_cache", "int", 0, "must be 0: window-sized caches are refused"),
) + KNN_ATTRIBUTES


def gqa_attribute(name: str) -> AttrSpec:
    for a in GQA_ATTRIBUTES:
        if a.name == name:
            return a
    raise KeyError(f"GroupQueryAttention has no attribute {name!r}; known: {[a.name for a in GQA_ATTRIBUTES]}")


def attribute(name: str) -> AttrSpec:
    for a in ATTRIBUTES:
        if a.name == name:
            return a
    raise KeyError(f"KnnAttention has no attribute {name!r}; known: {[a.name for a in ATTRIBUTES]}")


def parse_attribute(text: str) -> tuple[str, int | float | list[int]]:
    """ "NAME=VALUE" -> (name, value of the contract's type); lists comma-separated ("head_budgets=64,128"). Raises
    argparse.ArgumentTypeError (so that CLIs use it as an argument type) for an unknown name or a wrong value."""
    name, _, value = text.partition("=")
    try:
        spec = attribute(name)
    except KeyError as e:
        raise argparse.ArgumentTypeError(str(e).strip('"')) from e
    try:
        if spec.type == "ints":
            return name, [int(v) for v in value.split(",")] if value else []
        return name, int(value) if spec.type == "int" else float(value)
    except ValueError as e:
        kind = {"int": "an int", "float": "a float", "ints": "a list of ints"}[spec.type]
        raise argparse.ArgumentTypeError(f"{name} expects {kind}, got {value!r}") from e


def attribute_defaults() -> dict[str, int | float | None]:
    return {a.name: a.default for a in ATTRIBUTES}


def knn_threshold(attrs: dict | None = None) -> int:
    """Visible keys from which a query row may take the k-NN path (fewer: it attends to every key), for the given
    attributes over the defaults: max(min_keys, top_k + local_window + num_sink + 1). The native driver's copy
    (ops/csrc/attention.cc, knn_threshold) is pinned to this one by tests/ops/test_contract.py."""
    a = {**attribute_defaults(), **(attrs or {})}
    return max(a["min_keys"], a["top_k"] + a["local_window"] + a["num_sink"] + 1)


def _as_dict(op: str, inputs, outputs, attributes) -> dict:
    return {
        "domain": DOMAIN,
        "op": op,
        "version": VERSION,
        "inputs": [
            {"name": t.name, "shape": ",".join(t.shape), "dtypes": list(t.dtypes), "optional": t.optional}
            for t in inputs
        ],
        "outputs": [{"name": t.name, "shape": ",".join(t.shape), "dtypes": list(t.dtypes)} for t in outputs],
        "attributes": [
            {"name": a.name, "type": a.type, "default": list(a.default) if a.type == "ints" else a.default}
            for a in attributes
        ],
    }


def as_dict() -> dict:
    """The contract in the JSON form the native library reports (IceformerContractJson)."""
    return _as_dict(OP_TYPE, INPUTS, OUTPUTS, ATTRIBUTES)


def gqa_as_dict() -> dict:
    """GroupQueryAttention's contract as the native library reports it (IceformerGqaContractJson)."""
    return _as_dict(GQA_OP_TYPE, GQA_INPUTS, GQA_OUTPUTS, GQA_ATTRIBUTES)


def markdown(gqa: bool = False) -> str:
    """A contract as README tables (tests check the README carries exactly this text); gqa: GroupQueryAttention's,
    whose k-NN attributes are listed by name (they are KnnAttention's)."""
    op, inputs, outputs = (GQA_OP_TYPE, GQA_INPUTS, GQA_OUTPUTS) if gqa else (OP_TYPE, INPUTS, OUTPUTS)
    attributes = GQA_ATTRIBUTES[: len(GQA_ATTRIBUTES) - len(KNN_ATTRIBUTES)] if gqa else ATTRIBUTES
    lines = [
        f"Domain `{DOMAIN}`, op `{op}`, version {VERSION}.",
        "",
        "| # | input | shape | dtype | |",
        "|---|---|---|---|---|",
    ]
    for i, t in enumerate(inputs):
        opt = "optional; " if t.optional else ""
        lines.append(f"| {i} | `{t.name}` | [{','.join(t.shape)}] | {' or '.join(t.dtypes)} | {opt}{t.doc} |")
    for t in outputs:
        lines.append(f"| out | `{t.name}` | [{','.join(t.shape)}] | {' or '.join(t.dtypes)} | {t.doc} |")
    lines += ["", "| attribute | type | default | meaning |", "|---|---|---|---|"]
    for a in attributes:
        d = ("required" if gqa else "derived") if a.default is None else repr(a.default)
        d = "[]" if a.type == "ints" else d
        lines.append(f"| `{a.name}` | {a.type} | {d} | {a.doc} |")
    if gqa:
        lines += [
            "",
            "k-NN attributes, with KnnAttention's meaning and defaults: "
            + ", ".join(f"`{a.name}`" for a in KNN_ATTRIBUTES)
            + ". Refused inputs: "
            + ", ".join(f"`{n}`" for n in GQA_REFUSED_INPUTS)
            + "; refused output: `output_qk`.",
        ]
    return "\n".join(lines) + "\n"
