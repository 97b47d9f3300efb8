"""Recall of the exact top-k keys among the keys the k-NN path attends to: one definition for tools and tests."""

from __future__ import annotations

import numpy as np

from ..ops import contract
from ..ops._library import knn_select


def recall_at_k(q: np.ndarray, k: np.ndarray, rows, *, is_causal: int, **attrs) -> float:
    """Mean over query `rows` of |exact top_k keys by q.k among the visible ones, and the attended keys| / top_k.

    q [S,D], k [T,D] of one head; attrs: KnnAttention attributes over the contract defaults. Rows that see no
    more than top_k keys, or fewer than the k-NN threshold (min_keys, top_k + local_window + num_sink + 1; they run
    exact), are left out (their recall is 1 by construction).
    """
    settings = {**contract.attribute_defaults(), **attrs}
    settings = {a: v for a, v in settings.items() if a not in ("scale", "is_causal")}
    top_k = settings["top_k"]
    threshold = max(settings["min_keys"], top_k + settings["local_window"] + settings["num_sink"] + 1)
    S, T = q.shape[0], k.shape[0]
    rows = np.unique(np.asarray(list(rows), dtype=np.int64))
    ids, _ = knn_select(q, k, is_causal=is_causal, rows=rows, **settings)
    hits = []
    for t, i in enumerate(rows):
        last = i + T - S if is_causal else T - 1
        if last + 1 <= top_k or last + 1 < threshold:
            continue
        z = q[i] @ k[: last + 1].T
        hits.append(len(np.intersect1d(np.argpartition(-z, top_k)[:top_k], ids[t])) / top_k)
    return float(np.mean(hits)) if hits else 1.0
