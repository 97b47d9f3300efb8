"""ice-bench-batch: throughput of ice-batch on this machine, to size a cluster.

1. Scale-out: the same corpus serially in one process (all CPUs to one session), on Ray with 1 actor holding all
   CPUs, and with one actor per CPU; documents/s and tokens/s of each (interleaved over --repeats, medians).
2. Nodes: the same job with one actor per CPU on a Ray cluster of 1, 2 or 3 nodes on this machine (each node its
   own raylet; the CPUs split over them, a 3-node cluster's head node holding none, as in production): the same
   total CPUs, so the figure is the overhead of going multi-node, not a speed-up.
3. Cost model: documents/s per core against document length (serial, one thread), so that
   documents/s of a cluster ~= cores x (documents/s per core at your length).

  ice-bench-batch --model smollm2.knn.onnx --tokenizer smollm2 [--docs 24 --tokens 1024] [--lengths 512 1024 ...]
                  [--sections scale-out nodes cost]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..batch import BatchOptions, run_batch
from ..models import corpus

SECTIONS = ("scale-out", "nodes", "cost")


def _corpus(path: Path, tok, docs: int, tokens: int) -> None:
    """`docs` Brown Corpus documents of exactly `tokens` tokens each (decoded from token ids)."""
    with open(path, "w") as f:
        for i in range(docs):
            ids: list[int] = []
            count = 1
            while len(ids) < tokens:
                ids = tok(corpus.brown_text(start=7 * i, count=count)).input_ids
                count *= 2
            f.write(json.dumps({"id": f"d{i}", "text": tok.decode(ids[:tokens])}) + "\n")


def _run(docs: Path, model: str, tokenizer: str, max_tokens: int, **kw) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="ice-bench-batch-") as out:
        s = run_batch(
            BatchOptions(
                str(docs), out, model, tokenizer, max_tokens=max_tokens, overflow="truncate", batch_size=1, **kw
            )
        )
    if s.errors:
        raise RuntimeError(f"{s.errors} documents failed in a benchmark run")
    return s.documents_per_second, s.tokens_per_second


def _node_cpus(nodes: int, cpus: int) -> list[int]:
    """CPUs per node, head first: one node holds all; more nodes split them, the head keeping none when the
    workers alone can hold one CPU each."""
    if nodes == 1:
        return [cpus]
    workers = nodes - 1 if cpus >= nodes - 1 and nodes > 2 else nodes
    split = [cpus // workers + (i < cpus % workers) for i in range(workers)]
    return ([0] if workers < nodes else []) + split


def _on_cluster(node_cpus: list[int], docs: Path, args, actors: int) -> tuple[float, float]:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": node_cpus[0]})
    try:
        for n in node_cpus[1:]:
            cluster.add_node(num_cpus=n)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        return _run(docs, args.model, args.tokenizer, args.tokens, actors=actors, cpus_per_actor=1)
    finally:
        ray.shutdown()
        cluster.shutdown()


def _nodes(docs: Path, args, cpus: int, console: Console) -> dict:
    layouts = {n: _node_cpus(n, cpus) for n in args.nodes}
    runs: dict[int, list] = {n: [] for n in layouts}
    for r in range(args.repeats):  # interleaved
        for n, node_cpus in layouts.items():
            runs[n].append(_on_cluster(node_cpus, docs, args, cpus))
            console.print(f"repeat {r + 1}: {n} nodes {node_cpus}: {runs[n][-1][0]:.3f} documents/s")
    table = Table(title=f"{cpus} actors x 1 CPU on 1-{max(layouts)} nodes (medians of {args.repeats})")
    for col in ["nodes", "CPUs per node (head first)", "documents/s", "tokens/s", "vs 1 node"]:
        table.add_column(col)
    result, base = {}, statistics.median(d for d, _ in runs[min(layouts)])
    for n, rs in runs.items():
        d, t = statistics.median(x for x, _ in rs), statistics.median(y for _, y in rs)
        result[n] = {"cpus_per_node": layouts[n], "documents_per_s": d, "tokens_per_s": t, "runs": rs}
        table.add_row(str(n), str(layouts[n]), f"{d:.3f}", f"{t:.0f}", f"{d / base:.2f}x")
    console.print(table)
    return result


def _scale_out(docs: Path, args, cpus: int, console: Console) -> dict:
    import ray

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    configs = {
        "serial, one session": dict(serial=True, cpus_per_actor=cpus),
        f"Ray, 1 actor x {cpus} CPUs": dict(actors=1, cpus_per_actor=cpus),
        f"Ray, {cpus} actors x 1 CPU": dict(actors=cpus, cpus_per_actor=1),
    }
    runs: dict[str, list] = {name: [] for name in configs}
    try:
        for r in range(args.repeats):  # interleaved: the machine's noise hits every configuration alike
            for name, kw in configs.items():
                runs[name].append(_run(docs, args.model, args.tokenizer, args.tokens, **kw))
                console.print(f"repeat {r + 1}: {name}: {runs[name][-1][0]:.3f} documents/s")
    finally:
        ray.shutdown()
    table = Table(title=f"{args.docs} documents x {args.tokens} tokens, {cpus} CPUs (medians of {args.repeats})")
    for col in ["configuration", "documents/s", "tokens/s", "vs serial"]:
        table.add_column(col)
    result, base = {}, statistics.median(d for d, _ in runs["serial, one session"])
    for name, rs in runs.items():
        d, t = statistics.median(x for x, _ in rs), statistics.median(y for _, y in rs)
        result[name] = {"documents_per_s": d, "tokens_per_s": t, "runs": rs}
        table.add_row(name, f"{d:.3f}", f"{t:.0f}", f"{d / base:.2f}x")
    console.print(table)
    return result


def _cost_model(tmp: Path, tok, args, console: Console) -> dict:
    table = Table(title="cost model: one core, serial")
    for col in ["tokens per document", "documents/s per core", "tokens/s per core"]:
        table.add_column(col)
    result = {}
    for n in args.lengths:
        path = tmp / f"len{n}.jsonl"
        _corpus(path, tok, args.length_docs, n)
        d, t = _run(path, args.model, args.tokenizer, n, serial=True, cpus_per_actor=1)
        result[n] = {"documents_per_s": d, "tokens_per_s": t}
        table.add_row(str(n), f"{d:.3f}", f"{t:.0f}")
    console.print(table)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="ice-bench-batch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True, help="recipe name (smollm2, qwen2.5-coder-0.5b)")
    ap.add_argument("--docs", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=1024, help="tokens per document in the scale-out comparison")
    ap.add_argument("--lengths", type=int, nargs="*", default=[512, 1024, 2048, 4096])
    ap.add_argument("--length-docs", type=int, default=4, help="documents per length in the cost model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nodes", type=int, nargs="*", default=[1, 2, 3], help="cluster sizes of the nodes section")
    ap.add_argument("--sections", nargs="*", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    from ..models.export import decoder

    tok = decoder(args.tokenizer).tokenizer()
    cpus = os.cpu_count() or 1
    console = Console(stderr=True)
    result: dict = {"cpus": cpus, "docs": args.docs, "tokens": args.tokens}
    with tempfile.TemporaryDirectory(prefix="ice-bench-batch-") as tmp:
        docs = Path(tmp) / "docs.jsonl"
        _corpus(docs, tok, args.docs, args.tokens)
        if "scale-out" in args.sections:
            result["scale_out"] = _scale_out(docs, args, cpus, console)
        if "nodes" in args.sections:
            result["nodes"] = _nodes(docs, args, cpus, console)
        if "cost" in args.sections:
            result["cost_model"] = _cost_model(Path(tmp), tok, args, console)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
