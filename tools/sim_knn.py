"""Simulate k-NN attention estimators in float64 on captured activations (ice-capture-qk), before building one.

For sampled query blocks of every query head of each captured layer (causal), each candidate's output rows are
compared with exact attention: relative error per row (mean, worst head's mean, and over the capture's last 256
rows, which decide the next token), exactly scored keys per row, block summaries per row, and a modelled cost
relative to exact attention over the same rows (multiply-adds; tools/_sim_knn.py states the model). The
candidates and their parameters are in tools/_sim_knn.py; docs/decisions.md has the table this tool wrote.

  ice-sim-knn                                   # the shipped SmolLM2 capture, the default candidates
  ice-sim-knn qwen16k.npz --from 8192 --blocks 6 --json sim.json
  ice-sim-knn qwen16k.npz --candidate '{"kind": "union", "tail": "summary", "budget": 128}'
  ice-sim-knn qwen16k.npz --candidate '{"rows": 16, "budget": 256, "samples": 512}'   # an exact set per 16 rows
  ice-sim-knn qwen16k.npz --from 8192 --candidate '{"name": "b64", "budget": 64}' \
      --candidate '{"name": "b512", "budget": 512}' --route 0.01 0.02   # per-head settings, calibrated at 8k

The --json rows also carry each query head's error and cost (err_per_head, cost_per_head), for per-head settings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ..metrics import relative_error
from . import _sim_knn as sim

SHIPPED = Path(__file__).resolve().parent / "data" / "smollm2_qkv_2048.npz"

DEFAULT_CANDIDATES = [
    {"name": "today (sample 1024)", "kind": "union"},
    {"name": "today, 256 samples", "kind": "union", "samples": 256},
    {"name": "summary order 0", "kind": "union", "tail": "summary", "order": 0},
    {"name": "summary order 1", "kind": "union", "tail": "summary", "order": 1},
    {"name": "summary order 2", "kind": "union", "tail": "summary", "order": 2},
    {"name": "scan mass", "kind": "union", "tail": "scan"},
    {"name": "oracle block mass", "kind": "union", "tail": "oracle"},
    {"name": "top set only", "kind": "union", "tail": "none"},
    {"name": "scan mass 0.9 (adaptive top set)", "kind": "union", "mass": 0.9},
    {"name": "blocks mass 0.9", "kind": "blocks", "mass": 0.9},
]


def query_blocks(T: int, start: int, n: int, last_rows: int = 256) -> list[int]:
    """First rows of n query blocks spread over [start, T - last_rows) and of the blocks covering the last rows
    (T: the rows simulated; causal, so the first T rows of a longer capture are a T-token prompt)."""
    start = max(start, sim.BLOCK) // sim.BLOCK * sim.BLOCK
    tail = (T - last_rows) // sim.BLOCK * sim.BLOCK
    spread = np.linspace(start, max(start, tail - sim.BLOCK), n).astype(int) // sim.BLOCK * sim.BLOCK if n else []
    return sorted(set(int(x) for x in spread) | set(range(tail, T - sim.BLOCK + 1, sim.BLOCK)))


def simulate(
    path: str,
    candidates: list[dict],
    start: int,
    n_blocks: int,
    layers: list[int] | None = None,
    rank: int = 32,
    tokens: int | None = None,
    console: Console | None = None,
) -> list[dict]:
    """One row per (candidate, layer) with the metrics of the module docstring, on the first `tokens` rows and keys
    (default: all)."""
    data = np.load(path)
    Q, K, V = (data[n][:, :, :tokens] for n in ("Q", "K", "V"))
    group, layer_ids = int(data["group"]), [int(x) for x in data["layers"]]
    Hq, T, D = Q.shape[1:]
    scale = D**-0.5
    starts = query_blocks(T, start, n_blocks)
    # rows of the simulated blocks in order (starts ascend): the blocks of the last 256 rows come last
    n_last = sum(i0 >= T - 256 for i0 in starts) * sim.BLOCK
    picked = slice(None)
    last_rows = slice(len(starts) * sim.BLOCK - n_last, None)
    rows = []
    for li in range(len(layer_ids)) if layers is None else [layer_ids.index(x) for x in layers]:
        heads = [sim.head_data(Q[li, k * group : (k + 1) * group], K[li, k], V[li, k], rank) for k in range(K.shape[1])]
        shape = (1, Hq, len(starts) * sim.BLOCK, V.shape[-1])
        ref = np.zeros(shape)
        acc = [{"out": np.zeros(shape), "exact": 0.0, "summ": 0.0, "cost": np.zeros(Hq)} for _ in candidates]
        visible_head = np.zeros(Hq)
        for hq in range(Hq):
            h = heads[hq // group]
            for bi, i0 in enumerate(starts):
                at = (0, hq, slice(bi * sim.BLOCK, (bi + 1) * sim.BLOCK))
                q = Q[li, hq, i0 : i0 + sim.BLOCK].astype(np.float64)
                ref[at] = sim.exact_rows(q, h, i0, scale)
                visible_head[hq] += float(np.arange(i0 + 1, i0 + len(q) + 1).sum())
                for spec, a in zip(candidates, acc):
                    res = sim.run_candidate({k: v for k, v in spec.items() if k != "name"}, q, h, i0, scale)
                    a["out"][at] = res.out
                    a["exact"] += sum(c.exact for c in res.cost)
                    a["summ"] += sum(c.summaries for c in res.cost)
                    a["cost"][hq] += sum(c.total for c in res.cost)
        n_rows, visible = Hq * len(starts) * sim.BLOCK, visible_head.sum()
        for spec, a in zip(candidates, acc):
            err_mean, err_worst = relative_error(a["out"], ref, picked)
            per_head = [relative_error(a["out"][:, [hq]], ref[:, [hq]], picked)[0] for hq in range(Hq)]
            rows.append(
                {
                    "candidate": spec.get("name", json.dumps(spec)),
                    "spec": spec,
                    "layer": layer_ids[li],
                    "err_mean": err_mean,
                    "err_worst_head": err_worst,
                    "err_last_rows": relative_error(a["out"], ref, last_rows)[0] if n_last else None,
                    "exact_keys_per_row": a["exact"] / n_rows,
                    "summary_cost_per_row": a["summ"] / n_rows,
                    "visible_keys_per_row": visible / n_rows,
                    "cost_fraction": a["cost"].sum() / visible,
                    # per query head, for routing (a setting per head): error and cost as above
                    "err_per_head": per_head,
                    "cost_per_head": (a["cost"] / visible_head).tolist(),
                }
            )
            if console:
                r = rows[-1]
                console.log(
                    f"layer {r['layer']} {r['candidate']}: err {r['err_mean']:.4f} cost {r['cost_fraction']:.3f}"
                )
    return rows


def route(calib: list[dict], evaluation: list[dict], target: float) -> list[dict]:
    """Per-head routing: for each layer and query head, the cheapest candidate whose error on the calibration rows
    is <= target (none: the most accurate one), then that head's error and cost on the evaluation rows."""
    out = []
    for layer in sorted({r["layer"] for r in calib}):
        cal = [r for r in calib if r["layer"] == layer]
        ev = {r["candidate"]: r for r in evaluation if r["layer"] == layer}
        picks = []
        for h in range(len(cal[0]["err_per_head"])):
            ok = [r for r in cal if r["err_per_head"][h] <= target]
            best = min(ok, key=lambda r: r["cost_per_head"][h]) if ok else min(cal, key=lambda r: r["err_per_head"][h])
            picks.append(best["candidate"])
        err = [ev[c]["err_per_head"][h] for h, c in enumerate(picks)]
        cost = [ev[c]["cost_per_head"][h] for h, c in enumerate(picks)]
        out.append(
            {
                "candidate": f"routed, calibration error <= {100 * target:g}%",
                "layer": layer,
                "err_mean": float(np.mean(err)),
                "err_worst_head": float(np.max(err)),
                "err_last_rows": None,
                "exact_keys_per_row": float("nan"),
                "summary_cost_per_row": float("nan"),
                "cost_fraction": float(np.mean(cost)),
                "picks": picks,
            }
        )
    return out


def table(rows: list[dict], title: str) -> Table:
    t = Table(title=title)
    for col in [
        "candidate",
        "layer",
        "err %",
        "worst head %",
        "last 256 rows %",
        "exact keys / row",
        "summaries / row (key units)",
        "cost vs exact",
        "modelled speed-up",
    ]:
        t.add_column(col, justify="right")
    for r in rows:
        last = "-" if r["err_last_rows"] is None else f"{100 * r['err_last_rows']:.2f}"
        t.add_row(
            r["candidate"],
            str(r["layer"]),
            f"{100 * r['err_mean']:.2f}",
            f"{100 * r['err_worst_head']:.2f}",
            last,
            f"{r['exact_keys_per_row']:.0f}",
            f"{r['summary_cost_per_row']:.0f}",
            f"{r['cost_fraction']:.3f}",
            f"{1 / r['cost_fraction']:.2f}x",
        )
    return t


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="ice-sim-knn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("data", nargs="?", default=str(SHIPPED), help="npz from ice-capture-qk (default: the shipped one)")
    ap.add_argument(
        "--candidate",
        type=json.loads,
        action="append",
        help='{"name": ..., "kind": "union"|"blocks", parameters}; repeatable (default: a preset set)',
    )
    ap.add_argument("--from", dest="start", type=int, default=1024, help="first query row simulated (default 1024)")
    ap.add_argument("--tokens", type=int, help="simulate a prompt of the capture's first TOKENS tokens (causal)")
    ap.add_argument("--blocks", type=int, default=6, help="query blocks spread over the rows, besides the last 256")
    ap.add_argument("--layers", type=int, nargs="*", help="captured layer ids (default: all)")
    ap.add_argument("--rank", type=int, default=32, help="rank of the retrieval basis (the op's `rank`)")
    ap.add_argument(
        "--route",
        type=float,
        nargs="*",
        help="per-head routing at these error targets: each head's cheapest candidate within the target on "
        "calibration rows (a --calibrate-tokens prompt, rows from a quarter of it), reported on the simulated rows",
    )
    ap.add_argument("--calibrate-tokens", type=int, default=8192, help="--route: the calibration prompt's tokens")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    console = Console(width=200)
    candidates = args.candidate or DEFAULT_CANDIDATES
    rows = simulate(
        args.data,
        candidates,
        args.start,
        args.blocks,
        args.layers,
        args.rank,
        args.tokens,
        console,
    )
    if args.route:
        n_cal = args.calibrate_tokens
        calib = simulate(args.data, candidates, n_cal // 4, args.blocks, args.layers, args.rank, n_cal, console)
        rows += [r for t in args.route for r in route(calib, rows, t)]
    n = f"first {args.tokens} tokens, " if args.tokens else ""
    console.print(table(rows, f"Estimators simulated on {args.data} (causal, {n}rows from {args.start}, float64)"))
    if args.json:
        out = {"data": args.data, "tokens": args.tokens, "from": args.start, "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
