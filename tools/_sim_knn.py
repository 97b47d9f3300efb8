"""Engine of ice-sim-knn: estimators of causal attention simulated in float64 on captured activations.

Shape vocabulary: Hq query heads on Hkv KV heads (group = Hq / Hkv), T keys (= query rows, causal), D key dim,
Dv value dim. A query block is BLOCK consecutive rows starting at i0 (a multiple of BLOCK), a key block BLOCK
consecutive keys: key blocks 0 .. i0 / BLOCK - 1 are visible to every row of the query block. Every candidate
shares today's first step, a rank-`rank` score scan q . k ~ (q A) . (k X) keeping each row's best `budget` keys,
and the block's exact set U (that union, the first `sinks` keys, every row's last `window` keys). They differ in
how the visible keys outside U enter the softmax:

- "sample" (today's op, search 0): one systematic sample of `samples` of those keys per query block, each weighted
  by the sampling step (unbiased).
- "summary": per key block b, the moments of its keys outside U: count n, mean key mu, mean value nu and, in the
  first `rank2` directions of the basis (k' = k X, q' = q A), the covariance S of k' and the cross covariance C of
  (v, k'). Block b is one pseudo-key of log-weight s q . mu + log n (+ s^2 q'^T S q' / 2 at `order` >= 1) and
  value nu (+ s C q' at order 2): for jointly Gaussian (k', v) those are exactly log E-sums of e^{s q.k} and the
  e^{s q.k}-weighted mean value (Stein's lemma); order 0 is SparQ-style mean-value reallocation per block.
- "importance": a systematic sample of `samples` draws of those keys with probabilities from `proposal`
  (_proposal: the block's mean query scored by the scan, each row's scan scores, or the true scores), mixed with
  uniform (`mix`), each draw weighted 1 / (samples x its probability) (unbiased; MagicPIG's idea on the scan).
- "scan": block b's mass from the scan's own scores, sum over its keys outside U of e^{s q'.k'}, with value nu.
- "oracle": block b's true mass outside U with value nu: the floor of every estimator that gives a block one
  value per row and gets its mass right.
- "none": U only, renormalised.
- "blocks" (no U): whole key blocks chosen per row by estimated mass (order-0/1 scores above) until the rows'
  cumulative share reaches `mass`, unioned over the query block with the sink block, the diagonal and the block
  before it; the remaining blocks as "summary".

Cost model (`Cost`): multiply-adds per row in units of one exactly scored key (D + Dv).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 64  # query rows per block and keys per key block
EXP_MADDS = 8  # one exp counted as this many multiply-adds (the op's polynomial exp, vectorised)


@dataclass(frozen=True)
class Cost:
    """Per row, in exactly scored keys: exact keys (U and samples); block summaries ((D + Dv + rank2^2 at order >= 1
    + Dv rank2 at order 2) / (D + Dv) each); the 8-bit scan (rank / 4 multiply-adds per visible key: four 8-bit
    products per 32-bit lane) plus, for "scan", one exp per key outside U."""

    exact: float
    summaries: float
    scan: float

    @property
    def total(self) -> float:
        return self.exact + self.summaries + self.scan


@dataclass
class HeadData:
    """One KV head of one layer in float64, with its retrieval basis and per-key-block sums."""

    K: np.ndarray  # [T, D]
    V: np.ndarray  # [T, Dv]
    A: np.ndarray  # [D, r] query side of the basis
    X: np.ndarray  # [D, r] key side: q . k ~ (q A) . (k X)
    Kr: np.ndarray  # [T, r] = K X
    sk: np.ndarray  # [nb, D] sum of each key block's keys
    sv: np.ndarray  # [nb, Dv] of its values
    skr: np.ndarray  # [nb, r] of k X
    skk: np.ndarray  # [nb, r, r] of (k X)(k X)^T
    svk: np.ndarray  # [nb, Dv, r] of v (k X)^T


@dataclass
class Moments:
    """Of the keys left in some key blocks (module docstring), for blocks `ids`."""

    ids: np.ndarray
    n: np.ndarray
    mu: np.ndarray
    nu: np.ndarray
    S: np.ndarray
    C: np.ndarray

    def take(self, sel: np.ndarray) -> Moments:
        return Moments(self.ids[sel], self.n[sel], self.mu[sel], self.nu[sel], self.S[sel], self.C[sel])


@dataclass
class BlockResult:
    """One query block of one query head: output rows and, per row, what it cost (in Cost's units)."""

    out: np.ndarray  # [R, Dv]
    cost: list[Cost]


def retrieval_basis(Qg: np.ndarray, K: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(A, X), D x rank each: X the top eigenvectors of Gq Gk (Gk-orthonormal), A = Gk X, which minimises
    E (q.k - (qA).(kX))^2 over the group's queries Qg and the keys K (the op's basis, lowrank.h)."""
    D = K.shape[1]
    gk = K.T @ K / len(K) + 1e-9 * np.eye(D)
    gq = Qg.T @ Qg / len(Qg)
    w, u = np.linalg.eigh(gk)
    half = (u * np.sqrt(w)) @ u.T
    _, y = np.linalg.eigh(half @ gq @ half)
    X = (u / np.sqrt(w)) @ u.T @ y[:, ::-1][:, :rank]
    return gk @ X, X


def head_data(Q: np.ndarray, K: np.ndarray, V: np.ndarray, rank: int) -> HeadData:
    """Q [group, T, D] the query heads of one KV head, K [T, D], V [T, Dv] (any float dtype)."""
    K, V = K.astype(np.float64), V.astype(np.float64)
    Qg = Q.reshape(-1, Q.shape[-1])[:: max(1, Q.shape[0] * Q.shape[1] // 8192)].astype(np.float64)
    A, X = retrieval_basis(Qg, K, rank)
    Kr = K @ X
    nb = len(K) // BLOCK
    kb, vb, rb = (x[: nb * BLOCK].reshape(nb, BLOCK, -1) for x in (K, V, Kr))
    return HeadData(
        K,
        V,
        A,
        X,
        Kr,
        kb.sum(1),
        vb.sum(1),
        rb.sum(1),
        np.einsum("bjr,bjs->brs", rb, rb),
        np.einsum("bjd,bjr->bdr", vb, rb),
    )


def exact_rows(q: np.ndarray, h: HeadData, i0: int, scale: float) -> np.ndarray:
    """Causal attention of rows i0 .. i0 + R - 1 (q [R, D]) over keys 0..i, float64."""
    z = _logits(q, h, np.arange(i0 + len(q)), i0, scale)
    p = np.exp(z - z.max(1, keepdims=True))
    return (p @ h.V[: i0 + len(q)]) / p.sum(1, keepdims=True)


def block_moments(h: HeadData, nb: int, removed: np.ndarray, rank2: int) -> Moments:
    """Moments of key blocks 0 .. nb-1 without the keys `removed` (ids); blocks left empty are dropped."""
    removed = removed[removed < nb * BLOCK]
    rb = removed // BLOCK
    n = np.full(nb, float(BLOCK))
    np.subtract.at(n, rb, 1.0)
    kr = h.Kr[removed, :rank2]
    sums = [
        h.sk[:nb].copy(),
        h.sv[:nb].copy(),
        h.skr[:nb, :rank2].copy(),
        h.skk[:nb, :rank2, :rank2].copy(),
        h.svk[:nb, :, :rank2].copy(),
    ]
    for s, x in zip(
        sums,
        [h.K[removed], h.V[removed], kr, kr[:, :, None] * kr[:, None, :], h.V[removed][:, :, None] * kr[:, None, :]],
    ):
        np.subtract.at(s, rb, x)
    ids = np.flatnonzero(n > 0)
    sk, sv, skr, skk, svk = (s[ids] for s in sums)
    m = n[ids][:, None]
    mr, nu = skr / m, sv / m
    S = skk / m[:, :, None] - mr[:, :, None] * mr[:, None, :]
    C = svk / m[:, :, None] - nu[:, :, None] * mr[:, None, :]
    return Moments(ids, n[ids], sk / m, nu, S, C)


def summary_part(q, h: HeadData, mom: Moments, scale: float, order: int) -> tuple[np.ndarray, np.ndarray]:
    """(log-weights [R, nb], values [nb, Dv] or [R, nb, Dv]) of mom's blocks as pseudo-keys (module docstring)."""
    a = scale * q @ mom.mu.T + np.log(mom.n)
    if order == 0:
        return a, mom.nu
    qr = q @ h.A[:, : mom.S.shape[1]]
    a = a + 0.5 * scale**2 * np.einsum("rs,bst,rt->rb", qr, mom.S, qr)
    if order == 1:
        return a, mom.nu
    return a, mom.nu[None] + scale * np.einsum("bdr,qr->qbd", mom.C, qr)


def _logits(q, h: HeadData, keys: np.ndarray, i0: int, scale: float) -> np.ndarray:
    """s q . k over `keys` (ids), -inf where a key is after the row."""
    z = scale * q @ h.K[keys].T
    z[np.arange(i0, i0 + len(q))[:, None] < keys[None, :]] = -np.inf
    return z


def _combine(parts: list[tuple]) -> np.ndarray:
    """One softmax over parts (log-weights [R, n], values [n, Dv] or [R, n, Dv], optional sign): sum of
    sign e^lw v over sum of sign e^lw."""
    mx = np.max([np.max(p[0], axis=1, initial=-np.inf) for p in parts], axis=0)[:, None]
    num, den = 0.0, 0.0
    for lw, val, *sign in parts:
        w = np.where(np.isfinite(lw), np.exp(lw - mx), 0.0) * (sign[0] if sign else 1.0)
        den = den + w.sum(1)
        num = num + (np.einsum("rn,rnd->rd", w, val) if val.ndim == 3 else w @ val)
    return num / den[:, None]


def _per_block(w: np.ndarray, keys: np.ndarray, nb: int) -> np.ndarray:
    """[R, nb]: w [R, len(keys)] summed per key block of `keys`."""
    out = np.zeros((w.shape[0], nb))
    np.add.at(out.T, keys // BLOCK, w.T)
    return out


def _log(x):
    with np.errstate(divide="ignore"):
        return np.log(x)


def retrieve(
    q, h: HeadData, i0: int, scale: float, *, budget: int, sinks: int, window: int, mass: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(U, approximate scores [R, i0 + R]): the query block's exact set (module docstring) from the rank-r scan;
    with mass < 1 a row keeps only its best keys whose approximate share of its softmax reaches `mass`."""
    R = len(q)
    rows, cols = np.arange(i0, i0 + R), np.arange(i0 + R)
    approx = (q @ h.A) @ h.Kr[: i0 + R].T
    forced = (cols[None, :] < sinks) | (cols[None, :] > rows[:, None] - window)
    ranked = np.where((cols[None, :] > rows[:, None]) | forced, -np.inf, approx)
    top = np.argsort(-ranked, axis=1)[:, :budget]
    inset = np.zeros(i0 + R, bool)
    if mass < 1.0:
        z = scale * np.where(cols[None, :] > rows[:, None], -np.inf, approx)
        p = np.exp(z - z.max(1, keepdims=True))
        share = np.take_along_axis(p, top, 1) / p.sum(1, keepdims=True)
        base = (p * forced).sum(1) / p.sum(1)
        need = (np.cumsum(share, 1) + base[:, None] < mass).sum(1) + 1
        top = [top[r, : need[r]] for r in range(R)]
    inset[np.concatenate(list(top))] = True
    inset[:sinks] = True
    inset[max(0, i0 - window + 1) :] = True
    return np.flatnonzero(inset), approx


def _systematic(rest: np.ndarray, n: int, seed: list[int]) -> tuple[np.ndarray, float]:
    """(picked keys, step): a systematic sample of n of `rest` (ids), each standing for `step` keys."""
    n = min(n, len(rest))
    step = len(rest) / n
    at = (np.random.default_rng(seed).uniform() + np.arange(n)) * step
    return rest[np.minimum(len(rest) - 1, at.astype(np.int64))], step


def _proposal(q, h, rest, approx, i0, scale, kind, temper, mix) -> np.ndarray:
    """Sampling probabilities over `rest` (sum 1): mix x uniform + (1 - mix) x f^temper normalised, f from
    - "mean_query": e^{s qbar'.k'}, qbar the block's mean query in the retrieval basis (one rank-r dot per key);
    - "rows": the mean over rows of each row's normalised e^{s q'.k'} (one exp per row and key);
    - "oracle": the mean over rows of each row's normalised true e^{s q.k}."""
    if kind == "mean_query":
        lf = scale * (q.mean(0) @ h.A) @ h.Kr[rest].T
    else:
        z = scale * (approx[:, rest] if kind == "rows" else q @ h.K[rest].T)
        rows = np.arange(i0, i0 + len(q))
        z = np.where(rest[None, :] <= rows[:, None], z, -np.inf)
        e = np.exp(z - z.max(1, keepdims=True))
        lf = _log((e / e.sum(1, keepdims=True)).mean(0))
    f = np.exp(temper * (lf - lf.max()))
    return mix / len(rest) + (1.0 - mix) * f / f.sum()


def _systematic_pps(rest: np.ndarray, p: np.ndarray, n: int, seed: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(picked keys, weights): a systematic sample of n draws of `rest` with probabilities p (a key may be drawn
    more than once), each draw weighted 1 / (n p): unbiased for sums over `rest`."""
    at = (np.random.default_rng(seed).uniform() + np.arange(n)) / n
    idx = np.minimum(len(rest) - 1, np.searchsorted(np.cumsum(p), at, side="right"))
    return rest[idx], 1.0 / (n * p[idx])


def _tail_share(zu: np.ndarray, zt: np.ndarray) -> np.ndarray:
    """Per row, the share of the estimated softmax mass held by the tail (log-weights zt) next to U's (zu)."""
    mx = np.maximum(zu.max(1, initial=-np.inf), zt.max(1, initial=-np.inf))[:, None]
    su, st = np.exp(zu - mx).sum(1), np.exp(zt - mx).sum(1)
    return st / np.maximum(su + st, 1e-300)


def union_block(
    q,
    h,
    i0,
    scale,
    *,
    tail="sample",
    budget=256,
    mass=1.0,
    sinks=4,
    window=64,
    samples=1024,
    order=0,
    rank2=8,
    seed=0,
    wide_share=None,
    wide_samples=4096,
    proposal="mean_query",
    temper=1.0,
    mix=0.25,
) -> BlockResult:
    """Rows i0 .. i0 + R - 1 of one query head: exact over U, the rest by `tail` (module docstring). With
    `wide_share`, a block any of whose rows puts more than that share of its mass in the `samples` sample draws
    `wide_samples` instead (the op's rule for decode; both samples are counted in the cost)."""
    R, D, Dv = len(q), h.K.shape[1], h.V.shape[1]
    rows = np.arange(i0, i0 + R)
    U, approx = retrieve(q, h, i0, scale, budget=budget, sinks=sinks, window=window, mass=mass)
    rest = np.setdiff1d(np.arange(i0 + R), U)
    parts = [(_logits(q, h, U, i0, scale), h.V[U])]
    taken, nsum, exps = np.zeros(R), 0.0, (rows + 1.0) * (mass < 1.0)
    nb = (i0 + R + BLOCK - 1) // BLOCK
    if tail == "sample" and samples and len(rest):
        pick, step = _systematic(rest, samples, [seed, i0])
        z = _logits(q, h, pick, i0, scale) + np.log(step)
        if wide_share is not None and _tail_share(parts[0][0], z).max() > wide_share:
            taken = np.isfinite(z).sum(1)  # the op scores the first sample too
            pick, step = _systematic(rest, wide_samples, [seed, i0])
            z = _logits(q, h, pick, i0, scale) + np.log(step)
        parts.append((z, h.V[pick]))
        taken = taken + np.isfinite(z).sum(1)
    elif tail == "importance" and samples and len(rest):
        p = _proposal(q, h, rest, approx, i0, scale, proposal, temper, mix)
        pick, w = _systematic_pps(rest, p, samples, [seed, i0])
        z = _logits(q, h, pick, i0, scale) + np.log(w)[None, :]
        parts.append((z, h.V[pick]))
        taken = taken + np.isfinite(z).sum(1)
        exps = np.maximum(exps, len(rest) * (proposal == "rows") + 0.0)
    elif tail == "summary":
        mom = block_moments(h, i0 // BLOCK, U, rank2)
        parts.append(summary_part(q, h, mom, scale, order))
        nsum = len(mom.ids)
    elif tail in ("scan", "oracle") and len(rest):
        nu = np.zeros((nb, Dv))
        np.add.at(nu, rest // BLOCK, h.V[rest])
        nu /= np.maximum(np.bincount(rest // BLOCK, minlength=nb), 1)[:, None]
        z = _logits(q, h, rest, i0, scale) if tail == "oracle" else scale * approx[:, rest]
        z = np.where(rest[None, :] <= rows[:, None], z, -np.inf)
        mx = z.max(1, keepdims=True)
        parts.append((_log(_per_block(np.exp(z - mx), rest, nb)) + mx, nu))
        nsum, exps = nb, np.maximum(exps, np.isfinite(z).sum(1) * (tail == "scan"))
    out = _combine(parts)
    exact = (U[None, :] <= rows[:, None]).sum(1) + taken
    per_sum = summary_cost(D, Dv, order, rank2)
    scan = ((rows + 1) * h.A.shape[1] / 4 + exps * EXP_MADDS) / (D + Dv)
    return BlockResult(out, [Cost(float(e), nsum * per_sum, float(s)) for e, s in zip(exact, scan)])


def blocks_block(q, h, i0, scale, *, mass=0.9, max_blocks=64, order=0, rank2=8, sink_blocks=1) -> BlockResult:
    """Rows i0 .. i0 + R - 1 of one query head: whole key blocks chosen by estimated mass (module docstring)."""
    R, D, Dv = len(q), h.K.shape[1], h.V.shape[1]
    rows = np.arange(i0, i0 + R)
    nb = i0 // BLOCK
    mom = block_moments(h, nb, np.zeros(0, np.int64), rank2)
    chosen = np.zeros(nb, bool)
    chosen[: min(sink_blocks, nb)] = True
    chosen[max(0, nb - 1) :] = True
    if nb:
        a, _ = summary_part(q, h, mom, scale, min(order, 1))
        share = np.exp(a - a.max(1, keepdims=True))
        share /= share.sum(1, keepdims=True)
        by_mass = np.argsort(-share, axis=1)[:, :max_blocks]
        cum = np.cumsum(np.take_along_axis(share, by_mass, 1), axis=1)
        need = np.minimum((cum < mass).sum(1) + 1, by_mass.shape[1])
        for r in range(R):
            chosen[by_mass[r, : need[r]]] = True
    keys = np.concatenate(
        [np.arange(b * BLOCK, (b + 1) * BLOCK) for b in np.flatnonzero(chosen)] + [np.arange(nb * BLOCK, i0 + R)]
    ).astype(np.int64)
    parts = [(_logits(q, h, keys, i0, scale), h.V[keys])]
    if not chosen.all():
        parts.append(summary_part(q, h, mom.take(~chosen), scale, order))
    exact = (keys[None, :] <= rows[:, None]).sum(1)
    per_sum = summary_cost(D, Dv, order, rank2)
    return BlockResult(_combine(parts), [Cost(float(e), nb * per_sum, 0.0) for e in exact])


def summary_cost(D: int, Dv: int, order: int, rank2: int) -> float:
    """One block summary in exactly scored keys (Cost)."""
    return (D + Dv + (rank2 * rank2 if order >= 1 else 0) + (Dv * rank2 if order >= 2 else 0)) / (D + Dv)


CANDIDATES = {"union": union_block, "blocks": blocks_block}


def run_candidate(spec: dict, q, h: HeadData, i0: int, scale: float) -> BlockResult:
    """spec: {"kind": "union" | "blocks", "rows": R, **keyword arguments of that function}. `rows` (a divisor of
    BLOCK; default BLOCK) splits the query block into sub-blocks of R rows, each with its own exact set and tail:
    a smaller union per row, less of the neighbours' retrievals."""
    kw = dict(spec)
    run, sub = CANDIDATES[kw.pop("kind", "union")], kw.pop("rows", BLOCK)
    if BLOCK % sub:
        raise ValueError(f"rows must divide {BLOCK}, got {sub}")
    parts = [run(q[a : a + sub], h, i0 + a, scale, **kw) for a in range(0, len(q), sub)]
    return BlockResult(np.concatenate([r.out for r in parts]), [c for r in parts for c in r.cost])
