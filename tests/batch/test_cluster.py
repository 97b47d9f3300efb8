"""ice-batch on a multi-node Ray cluster on this machine: a head node without CPUs (the driver's, and the ledger's)
and worker nodes, each its own raylet with its own CPUs and resources (ray.cluster_utils.Cluster, what `ray start`
runs). The job is submitted as the docs say (`ice-batch ... --address HOST:PORT`) or from Python; results are
compared with the serial run (tests/batch/conftest.py), document by document.

Faults: a worker node removed while one of its actors is scoring a batch, the driver killed mid-job and the command
run again, a node that joins during the job with a CPU of another SIMD tier (ICEFORMER_SIMD in that node's
environment stands in for an AVX2-only machine)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from iceformer.batch import DocumentScorer, run_batch
from iceformer.ops import simd_tiers, simd_variant

from tests.support.batch import DOCUMENTS, cli_args, options, results

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.models, pytest.mark.exports]
WAIT = 240  # seconds any one job may take here (they take 20-60)


@contextlib.contextmanager
def cluster(*workers: dict, connect: bool = True):
    """(cluster, its worker nodes): a head node with no CPUs and the given worker nodes (add_node arguments); the
    test process connected to it if `connect` (as a driver would be)."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        nodes = [c.add_node(**w) for w in workers]
        c.wait_for_nodes()
        if connect:
            ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
        yield c, nodes
    finally:
        ray.shutdown()
        c.shutdown()


def ice_batch(*args: str) -> subprocess.Popen:
    """The CLI in its own process (a driver of its own), as a user runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "iceformer.batch._cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


class Marking(DocumentScorer):
    """Writes its node id and batch ids to `marker` when it starts the job's first batch, then waits `pause` s before
    scoring it (only that once, in the whole job): the test acts on the cluster while that batch is in flight."""

    marker: str = ""
    pause: float = 0.0

    def __call__(self, batch):
        try:
            with open(self.marker, "x") as f:  # exclusive: the first batch of the job, whichever actor runs it
                f.write(
                    json.dumps({"node": ray.get_runtime_context().get_node_id(), "ids": list(map(str, batch["id"]))})
                )
            time.sleep(self.pause)
        except FileExistsError:
            pass
        return super().__call__(batch)


def run_in_thread(opts, scorer) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def job():
        try:
            out["summary"] = run_batch(opts, scorer=scorer)
        except BaseException as e:  # reported by the test
            out["error"] = e

    t = threading.Thread(target=job, daemon=True)
    t.start()
    return t, out


def wait_for(path: Path, timeout: float = WAIT) -> dict:
    t0 = time.monotonic()
    while not path.exists() or not path.read_text():
        assert time.monotonic() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.1)
    return json.loads(path.read_text())


def marking(tmp_path, pause: float) -> type:
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    Marking.marker, Marking.pause = str(tmp_path / "marker"), pause
    return Marking


def test_cli_job_runs_on_the_worker_nodes_with_the_batch_resource(serial, docs, model, tmp_path):
    """Actors need the custom resource `batch`: the node without it (though it has the most CPUs) and the head
    node get none; the two that have it get one each (SPREAD); the numbers are the serial run's bits."""
    nodes = ({"num_cpus": 1, "resources": {"batch": 1}},) * 2 + ({"num_cpus": 2},)
    with cluster(*nodes, connect=False) as (c, workers):
        summary = tmp_path / "summary.json"
        args = ("--address", c.address, "--actors", "2", "--actor-resources", '{"batch": 1}', "--summary", str(summary))
        job = ice_batch(*cli_args(docs, model, tmp_path / "out", *args))
        log, _ = job.communicate(timeout=WAIT)
        assert job.returncode == 0, log
        batch_nodes = {n.node_id for n, spec in zip(workers, nodes) if "resources" in spec}
    s = json.loads(summary.read_text())
    assert (s["documents"], s["skipped"], s["retried"]) == (DOCUMENTS, 0, [])
    assert {w["node"] for w in s["workers"]} == batch_nodes and len(batch_nodes) == 2
    assert {w["simd"] for w in s["workers"]} == {simd_variant()}
    assert sum(w["documents"] for w in s["workers"]) == DOCUMENTS
    assert results(tmp_path / "out") == serial
    assert "workers" in log and "SIMD tier" in log


def test_a_worker_node_removed_mid_batch(serial, docs, model, tmp_path):
    """The node of the actor scoring the first batch is removed while it does: its batches run again elsewhere
    (Ray's retries, or the job's next round once Ray gives up on them), every document is in the output exactly
    once, and the summary names the retried documents."""
    scorer = marking(tmp_path, pause=60)
    with cluster(*({"num_cpus": 1},) * 3) as (c, workers):
        job, out = run_in_thread(options(docs, model, tmp_path / "out", actors=2), scorer)
        first = wait_for(Path(scorer.marker))
        victim = first["node"]
        c.remove_node(next(n for n in workers if n.node_id == victim), allow_graceful=False)
        job.join(WAIT)
    assert "error" not in out and not job.is_alive(), out
    s = out["summary"]
    assert s.documents == DOCUMENTS and results(tmp_path / "out") == serial
    # The batch lost with its node, and the batches queued behind it on that actor; not the whole job.
    assert set(first["ids"]) <= set(s.retried) and len(s.retried) <= DOCUMENTS // 2
    assert victim not in {w.node for w in s.workers if w.batches}  # nothing finished on the removed node


def test_driver_killed_mid_job_and_the_command_run_again(serial, docs, model, tmp_path):
    """The driver (ice-batch) is killed once the first shard is written; the same command again skips what is
    there and scores the rest: nothing lost, nothing twice."""
    out = tmp_path / "out"
    with cluster(*({"num_cpus": 1},) * 2, connect=False) as (c, _):
        args = cli_args(docs, model, out, "--address", c.address, "--actors", "2", "--shard-rows", "1")
        first = ice_batch(*args)
        t0 = time.monotonic()
        while not list(out.glob("ray-*.parquet")):
            assert first.poll() is None and time.monotonic() - t0 < WAIT, first.stdout.read() if first.stdout else ""
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        written = len(results(out))
        assert 0 < written < DOCUMENTS
        again = ice_batch(*args, "--summary", str(tmp_path / "summary.json"))
        log, _ = again.communicate(timeout=WAIT)
        assert again.returncode == 0, log
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["skipped"] == written and s["documents"] == DOCUMENTS - written
    assert results(out) == serial
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary shard left behind


def test_a_node_that_joins_is_used_and_reports_its_tier(serial, docs, model, tmp_path):
    """One 1-CPU node holds the only actor the pool can place; a node whose library runs the AVX2 tier joins during
    the job and takes the second actor. Its rows differ from the serial run's by rounding only."""
    if "avx2" not in simd_tiers():
        pytest.skip("this CPU cannot run the avx2 tier")
    scorer = marking(tmp_path, pause=20)  # the first actor is held while the node joins and its actor starts
    with cluster({"num_cpus": 1}) as (c, _):
        job, out = run_in_thread(options(docs, model, tmp_path / "out", actors=2, batch_size=1), scorer)
        first = wait_for(Path(scorer.marker))["node"]
        joined = c.add_node(num_cpus=1, env_vars={"ICEFORMER_SIMD": "avx2"})
        job.join(WAIT)
    assert "error" not in out and not job.is_alive(), out
    s = out["summary"]
    by_node = {w.node: w for w in s.workers}
    assert set(by_node) == {first, joined.node_id}
    assert by_node[joined.node_id].simd == "avx2" and by_node[joined.node_id].documents > 0
    assert by_node[first].simd == simd_variant()
    got = results(tmp_path / "out")
    assert got.keys() == serial.keys()
    for doc_id, row in got.items():
        want = serial[doc_id]
        assert {k: v for k, v in row.items() if k not in ("perplexity", "nll")} == {
            k: v for k, v in want.items() if k not in ("perplexity", "nll")
        }
        if want["perplexity"] is not None:
            assert row["perplexity"] == pytest.approx(want["perplexity"], rel=1e-4)


@contextlib.contextmanager
def ray_start(*args: str):
    """`ray start ... --block` (the commands of docs/batch.md) as a process of its own; stopped on exit."""
    node = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", *args, "--object-store-memory", "200000000", "--block"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield node
    finally:
        node.terminate()  # --block: ray start stops its node's processes on SIGTERM
        try:
            node.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)


def wait_for_nodes(address: str, nodes: int) -> None:
    """Until `ray status` (a client of the cluster, with this environment's token) lists `nodes` active nodes."""
    t0 = time.monotonic()
    while True:
        status = subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "status", "--address", address],
            capture_output=True,
            text=True,
        )
        if status.stdout.count(" node_") >= nodes:
            return
        assert time.monotonic() - t0 < WAIT, status.stdout + status.stderr
        time.sleep(1)


def test_ray_start_cluster_with_token_authentication_and_a_runtime_env(serial, docs, model, tmp_path, monkeypatch):
    """`ray start --head` and `ray start --address` with token authentication on (RAY_AUTH_MODE=token, the token
    in RAY_AUTH_TOKEN on every node): a driver without the token gets an error that says how to pass it; with it,
    the job runs on the worker node, with the environment of `--runtime-env`."""
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    address = f"{ray.util.get_node_ip_address()}:{port}"
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "iceformer-test-token-" + "0123456789abcdef" * 2)
    args = cli_args(docs, model, tmp_path / "out", "--address", address, "--limit", "3")
    with (
        ray_start("--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard", "false"),
        ray_start("--address", address, "--num-cpus", "1"),
    ):
        wait_for_nodes(address, 2)
        no_token = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        refused = subprocess.run(
            [sys.executable, "-m", "iceformer.batch._cli", *args], env=no_token, capture_output=True, text=True
        )
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "cannot connect to the Ray cluster" in refused.stderr and "RAY_AUTH_TOKEN" in refused.stderr
        env = '{"env_vars": {"ICEFORMER_SIMD": "scalar"}}'  # reaches the actors: their library runs that tier
        accepted = ice_batch(*args, "--runtime-env", env, "--summary", str(tmp_path / "summary.json"))
        log, _ = accepted.communicate(timeout=WAIT)
        assert accepted.returncode == 0, log
    assert {w["simd"] for w in json.loads((tmp_path / "summary.json").read_text())["workers"]} == {"scalar"}
    got = results(tmp_path / "out")
    assert got.keys() == {"doc0", "doc1", "doc2"}
    for doc_id, row in got.items():
        assert row["perplexity"] == pytest.approx(serial[doc_id]["perplexity"], rel=1e-4)
