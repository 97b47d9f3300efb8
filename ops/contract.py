"""The KnnAttention op contract, stated once.

The rewriter, the numpy reference, the README table and the C++ registration check (tests) all derive
from these tables. Shape letters: B batch, Hq query heads, Hkv key/value heads, S queries, T keys,
D head dim, Dv value dim.
"""

from __future__ import annotations

from dataclasses import dataclass

DOMAIN = "iceformer"
OP_TYPE = "KnnAttention"
VERSION = 1


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
    type: str  # "int" | "float"
    default: int | float | None  # None: derived at run time
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
        "broadcastable (right-aligned, rank 1-4); bool: true = attend; float: added to the scaled logits",
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
    TensorSpec("Y", ("B", "Hq", "S", "Dv"), ("float",), False, "attention output; a query with no visible key gives zeros"),
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
    AttrSpec("top_k", "int", 128, "keys retrieved per query by k-NN search (the floor of the candidate budget); 0 or >= visible keys: exact attention"),
    AttrSpec(
        "search",
        "int",
        0,
        "0: low-rank scoring, each query attends the union of the keys retrieved by its block of 64 queries "
        "(default); 1: Prioritized DCI walk, each query its own top_k",
    ),
    AttrSpec("rank", "int", 32, "low-rank scoring: dimensions of the key subspace (top eigenvectors of K^T K)"),
    AttrSpec("L", "int", 4, "composite indices of Prioritized DCI"),
    AttrSpec("m", "int", 2, "simple indices (random directions) per composite index"),
    AttrSpec("max_candidates", "int", 256, "candidate budget per query: low-rank retrieves about max(top_k, this) keys; DCI scores this many and keeps top_k (0: no absolute cap)"),
    AttrSpec("candidate_fraction", "float", 0.0, "cap on candidates as a fraction of the visible keys (0: unused)"),
    AttrSpec("min_keys", "int", 8192, "queries seeing fewer keys than this run exact attention"),
    AttrSpec(
        "local_window",
        "int",
        64,
        "keys last(i) - local_window < j <= last(i) (last key causality and attn_mask allow), always attended",
    ),
    AttrSpec("num_sink", "int", 4, "keys j < num_sink, always attended (if visible)"),
    AttrSpec(
        "tail_samples", "int", 256, "systematic sample of positions (one per query block for low-rank search) estimating the softmax mass of unretrieved keys"
    ),
    AttrSpec(
        "tail_limit",
        "float",
        0.3,
        "rows whose tail estimate holds more than this share of the softmax mass are recomputed exactly (1: never)",
    ),
    AttrSpec("seed", "int", 0, "seed of the random directions and tail samples"),
)


def attribute(name: str) -> AttrSpec:
    for a in ATTRIBUTES:
        if a.name == name:
            return a
    raise KeyError(f"KnnAttention has no attribute {name!r}; known: {[a.name for a in ATTRIBUTES]}")


def attribute_defaults() -> dict[str, int | float | None]:
    return {a.name: a.default for a in ATTRIBUTES}


def as_dict() -> dict:
    """The contract in the JSON form the native library reports (IceformerContractJson)."""
    return {
        "domain": DOMAIN,
        "op": OP_TYPE,
        "version": VERSION,
        "inputs": [
            {"name": t.name, "shape": ",".join(t.shape), "dtypes": list(t.dtypes), "optional": t.optional}
            for t in INPUTS
        ],
        "outputs": [{"name": t.name, "shape": ",".join(t.shape), "dtypes": list(t.dtypes)} for t in OUTPUTS],
        "attributes": [{"name": a.name, "type": a.type, "default": a.default} for a in ATTRIBUTES],
    }


def markdown() -> str:
    """The contract as README tables (tests check the README carries exactly this text)."""
    lines = [
        f"Domain `{DOMAIN}`, op `{OP_TYPE}`, version {VERSION}.",
        "",
        "| # | input | shape | dtype | |",
        "|---|---|---|---|---|",
    ]
    for i, t in enumerate(INPUTS):
        opt = "optional; " if t.optional else ""
        lines.append(f"| {i} | `{t.name}` | [{','.join(t.shape)}] | {' or '.join(t.dtypes)} | {opt}{t.doc} |")
    for t in OUTPUTS:
        lines.append(f"| out | `{t.name}` | [{','.join(t.shape)}] | {' or '.join(t.dtypes)} | {t.doc} |")
    lines += ["", "| attribute | type | default | meaning |", "|---|---|---|---|"]
    for a in ATTRIBUTES:
        d = "derived" if a.default is None else repr(a.default)
        lines.append(f"| `{a.name}` | {a.type} | {d} | {a.doc} |")
    return "\n".join(lines) + "\n"
