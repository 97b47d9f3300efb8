"""Who ran what: every worker (a Ray actor, or this process in the serial mode) reports its node, process and the
SIMD tier our library dispatches to there, and every batch it starts and finishes, to a ledger on the driver's node.

The summary is built from the ledger: documents per worker (so a user sees where the work went, and which tier
computed which rows: tiers differ in rounding), and the documents whose batch was started more than once (their
first run was lost with its actor or node and Ray retried it). The ledger is a zero-CPU actor pinned to the
driver's node, so it outlives any worker node; it lives as long as the job's driver.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class WorkerReport:
    node: str  # Ray node id (hex), or "local" in the serial mode
    host: str  # the node's IP address (Ray) or host name (serial)
    pid: int
    simd: str  # the tier our library runs in that process (iceformer.ops.simd_variant())
    restarted: bool  # a Ray actor restarted after its process or node died
    batches: int = 0  # batches it finished
    documents: int = 0  # documents in them


def this_worker() -> dict:
    """The identity fields of a WorkerReport for the calling process (after its session loaded our library)."""
    from ..ops import simd_variant

    identity = {"node": "local", "host": socket.gethostname(), "pid": os.getpid(), "simd": simd_variant()}
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            identity.update(
                node=ctx.get_node_id(),
                host=ray.util.get_node_ip_address(),
                restarted=bool(ctx.get_actor_id() and ctx.was_current_actor_reconstructed),
            )
    except ImportError:
        pass
    identity.setdefault("restarted", False)
    return identity


class Ledger:
    """Batches started and finished per worker. A plain class: the serial mode calls it directly, Ray runs it as an
    actor (`ledger_actor`)."""

    def __init__(self):
        self.starts: dict[str, int] = {}  # document id -> times its batch was started
        self.workers: dict[tuple[str, int], WorkerReport] = {}

    def started(self, worker: dict, ids: list[str]) -> None:
        for i in ids:
            self.starts[i] = self.starts.get(i, 0) + 1
        self.workers.setdefault((worker["node"], worker["pid"]), WorkerReport(**worker))

    def finished(self, worker: dict, documents: int) -> None:
        key = (worker["node"], worker["pid"])
        r = self.workers.get(key) or WorkerReport(**worker)
        self.workers[key] = replace(r, batches=r.batches + 1, documents=r.documents + documents)

    def report(self) -> tuple[list[WorkerReport], list[str]]:
        """(workers in order of first batch, ids of documents whose batch was started more than once)."""
        return list(self.workers.values()), sorted(i for i, n in self.starts.items() if n > 1)


def ledger_actor():
    """A Ledger as a zero-CPU actor on this (the driver's) node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(Ledger).options(num_cpus=0, scheduling_strategy=here).remote()


class ReportingScorer:
    """A scorer (DocumentScorer or a subclass) that tells the ledger each batch it starts and finishes. Ray Data
    builds one per actor; the ledger calls are synchronous, so a batch counted as started was started."""

    def __init__(self, scorer: type, args: tuple, ledger):
        self.scorer = scorer(*args)
        self.ledger = ledger
        self.worker = this_worker()

    def _call(self, method: str, *args) -> None:
        fn = getattr(self.ledger, method)
        if hasattr(fn, "remote"):
            import ray

            ray.get(fn.remote(self.worker, *args))
        else:
            fn(self.worker, *args)

    def __call__(self, batch):
        ids = [str(i) for i in batch["id"]]
        self._call("started", ids)
        table = self.scorer(batch)
        self._call("finished", len(ids))
        return table
