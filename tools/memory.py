"""Peak resident memory of one onnxruntime run, measured in a fresh child process (ru_maxrss), so that the
figures of two models do not share allocator state."""

from __future__ import annotations

import multiprocessing as mp
import resource

import numpy as np


def _child(model: str, feeds: dict[str, np.ndarray], threads: int, with_library: bool, queue) -> None:
    import onnxruntime as ort

    from ..ops import session_options

    if with_library:
        so = session_options(threads)
    else:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    sess.run(None, feeds)
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)  # KiB on Linux


def peak_rss_mib(model: str, feeds: dict[str, np.ndarray], threads: int = 2, with_library: bool = True) -> float:
    """Peak RSS (MiB) of a fresh process that loads `model` and runs it once on `feeds`."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(str(model), feeds, threads, with_library, queue))
    proc.start()
    import queue as queues

    value = None
    while value is None:
        try:
            value = queue.get(timeout=1.0)
        except queues.Empty:
            if not proc.is_alive():
                break
    proc.join()
    if value is None or proc.exitcode != 0:
        raise RuntimeError(f"the memory probe for {model} exited with code {proc.exitcode}")
    return float(value)
