"""The child process of iceformer.metrics.peak_rss_mib: `python -m iceformer.tools.memory MODEL FEEDS.npz THREADS
WITH_LIBRARY` loads the model, runs it once and prints its own peak resident memory (VmHWM), so that two models
do not share allocator state and the caller's own memory does not count."""

from __future__ import annotations

import sys

import numpy as np

from .e2e_worker import vm_hwm_mib


def _child(model: str, feeds_path: str, threads: int, with_library: bool) -> None:
    import onnxruntime as ort

    from ..ops import session_options

    if with_library:
        so = session_options(threads)
    else:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
    feeds = dict(np.load(feeds_path))
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    sess.run(None, feeds)
    print(vm_hwm_mib())


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
