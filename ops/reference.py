"""Float64 numpy reference of the KnnAttention contract (exact attention semantics).

`knn_attention_reference` is what the op computes when `top_k` is 0 or covers every visible key; tests
compare the native kernel against it with stated tolerances.
"""

from __future__ import annotations

import math

import numpy as np

from . import contract


def visibility(
    B: int,
    Hq: int,
    S: int,
    T: int,
    *,
    is_causal: int,
    attn_mask=None,
    key_padding_mask=None,
    local_window_size: int = -1,
) -> np.ndarray:
    """Bool [B,Hq,S,T]: which keys each query may see (causal bottom-right, hard window, padding, bool masks,
    float masks at or below contract.MASKED_AT_OR_BELOW)."""
    vis = np.ones((B, Hq, S, T), dtype=bool)
    i = np.arange(S)[:, None]
    j = np.arange(T)[None, :]
    if is_causal:
        vis &= (j <= i + (T - S))[None, None]
    if local_window_size >= 0:
        vis &= (j > i + (T - S) - local_window_size)[None, None]
    if key_padding_mask is not None:
        vis &= (np.asarray(key_padding_mask) != 0)[:, None, None, :]
    if attn_mask is not None:
        m = np.asarray(attn_mask)
        m = m.reshape((1,) * (4 - m.ndim) + m.shape)
        with np.errstate(invalid="ignore"):  # float: at or below the contract's cutoff is masked; NaN is not
            vis &= np.broadcast_to(m if m.dtype == bool else ~(m <= contract.MASKED_AT_OR_BELOW), (B, Hq, S, T))
    return vis


def logits(Q, K, *, scale: float | None = None, attn_mask=None) -> np.ndarray:
    """Float64 [B,Hq,S,T] scaled logits plus a float mask (GQA: head h uses KV head h // (Hq/Hkv))."""
    Q = np.asarray(Q, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    B, Hq, S, D = Q.shape
    Hkv = K.shape[1]
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    Kq = np.repeat(K, Hq // Hkv, axis=1)
    z = np.einsum("bhsd,bhtd->bhst", Q, Kq) * scale
    if attn_mask is not None and np.asarray(attn_mask).dtype != bool:
        m = np.asarray(attn_mask, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            z = z + m.reshape((1,) * (4 - m.ndim) + m.shape)
    return z


def knn_attention_reference(
    Q,
    K,
    V,
    attn_mask=None,
    key_padding_mask=None,
    *,
    is_causal: int = 0,
    scale: float | None = None,
    local_window_size: int = -1,
    **_knn,
) -> np.ndarray:
    """Exact attention per the contract, in float64. Rows with no visible key are zeros."""
    Q, V = np.asarray(Q, dtype=np.float64), np.asarray(V, dtype=np.float64)
    vis = visibility(
        *Q.shape[:3],
        V.shape[2],
        is_causal=is_causal,
        attn_mask=attn_mask,
        key_padding_mask=key_padding_mask,
        local_window_size=local_window_size,
    )
    return _softmax_pv(logits(Q, K, scale=scale, attn_mask=attn_mask), vis, V)


def _softmax_pv(z: np.ndarray, sel: np.ndarray, V: np.ndarray) -> np.ndarray:
    """sum_j softmax_j(z over the selected keys) V_j per row ([B,Hq,S,T] logits and selection, V [B,Hkv,T,Dv]).
    A row with no selected key gives zeros; a NaN or inf logit makes its row NaN, as IEEE arithmetic does."""
    B, Hq, S, T = z.shape
    z = np.where(sel, z, -np.inf)
    mx = z.max(axis=-1, keepdims=True) if T else np.zeros((B, Hq, S, 1))
    safe = np.where(np.isfinite(mx), mx, 0.0)
    with np.errstate(invalid="ignore"):
        p = np.where(sel, np.exp(z - safe), 0.0)
    den = p.sum(axis=-1, keepdims=True)
    num = np.einsum("bhst,bhtd->bhsd", p, np.repeat(V, Hq // V.shape[1], axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den == 0, 0.0, num / np.where(den == 0, 1.0, den))


def topk_attention_reference(
    Q,
    K,
    V,
    attn_mask=None,
    key_padding_mask=None,
    *,
    is_causal: int = 0,
    scale: float | None = None,
    top_k: int,
    local_window: int = 0,
    num_sink: int = 0,
    local_window_size: int = -1,
    **_ignored,
) -> np.ndarray:
    """What the k-NN path computes when its search is perfect and there is no tail estimate: softmax over the
    visible keys among the sinks (j < num_sink) and the local window (last(i) - local_window < j <= last(i),
    last(i) = the last key the causal limit and attn_mask allow), and the `top_k` best other visible keys."""
    Q, V = np.asarray(Q, dtype=np.float64), np.asarray(V, dtype=np.float64)
    B, Hq, S, _ = Q.shape
    T = V.shape[2]
    vis = visibility(
        B,
        Hq,
        S,
        T,
        is_causal=is_causal,
        attn_mask=attn_mask,
        key_padding_mask=key_padding_mask,
        local_window_size=local_window_size,
    )
    z = logits(Q, K, scale=scale, attn_mask=attn_mask)
    # last(i): the last key allowed by the causal limit and attn_mask (not key_padding_mask)
    vis_cm = visibility(B, Hq, S, T, is_causal=is_causal, attn_mask=attn_mask)
    j = np.arange(T)
    last = np.where(vis_cm.any(-1), T - 1 - np.argmax(vis_cm[..., ::-1], axis=-1), -1)[..., None]
    forced = vis & ((j < num_sink) | (j > last - local_window))
    rest = np.where(vis & ~forced, z, -np.inf)
    order = np.argsort(-rest, axis=-1, kind="stable")[..., :top_k]
    chosen = np.zeros_like(vis)
    np.put_along_axis(chosen, order, True, axis=-1)
    return _softmax_pv(z, forced | (chosen & vis & ~forced), V)


# Rows per query head that the prompt's probe attends both ways (ops/csrc/auto_windows.h, kProbeRows).
PROBE_ROWS = 16


def probe_errors_reference(Q, K, V, *, is_causal: int = 0, scale: float | None = None, **attrs) -> np.ndarray:
    """What the prompt's probe measures per query head (attribute auto_window; ops/csrc/auto_windows.h), in float64
    ([B,Hq,S,D] Q, no masks or padding): the mean over its probe rows of ||o_w - o|| / ||o||, o over every visible key,
    o_w over the num_sink first keys and the auto_window keys ending at the row. The probe rows: PROBE_ROWS rows evenly
    spaced from the first k-NN row (contract.knn_threshold) that sees more than num_sink + auto_window keys to the
    last row. NaN for a head with no such row. A head streams when its error is at most auto_window_error."""
    a = {**contract.attribute_defaults(), **attrs}
    Q, K, V = (np.asarray(x, dtype=np.float64) for x in (Q, K, V))
    B, Hq, S, D = Q.shape
    T, g = K.shape[2], Hq // K.shape[1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    window, sinks = a["auto_window"], a["num_sink"]
    seen = [min(T, i + T - S + 1) if is_causal else T for i in range(S)]
    i0 = next((i for i in range(S) if seen[i] >= contract.knn_threshold(a) and seen[i] > sinks + window), S)
    span = S - i0
    n = min(PROBE_ROWS, span)
    rows = [i0 + (r * (span - 1) // (n - 1) if n > 1 else span - 1) for r in range(n)]
    out = np.full(Hq, np.nan)
    for h in range(Hq):
        errs = []
        for b in range(B):
            for i in rows:
                k, v = K[b, h // g, : seen[i]], V[b, h // g, : seen[i]]
                z = k @ Q[b, h, i] * scale
                p = np.exp(z - z.max())
                keep = np.zeros(seen[i], bool)
                keep[: min(sinks, seen[i])] = True
                keep[max(0, seen[i] - window) :] = True
                o = p @ v / p.sum()
                ow = p[keep] @ v[keep] / p[keep].sum()
                errs.append(np.linalg.norm(ow - o) / np.linalg.norm(o))
        if errs:
            out[h] = float(np.mean(errs))
    return out


__all__ = [
    "knn_attention_reference",
    "topk_attention_reference",
    "probe_errors_reference",
    "PROBE_ROWS",
    "visibility",
    "logits",
    "contract",
]
