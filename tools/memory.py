"""Peak resident memory of one onnxruntime run, measured in a fresh child process (`python -m
iceformer.tools.memory`, VmHWM of its own address space), so that two models do not share allocator state and
the caller's own memory does not count."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .e2e_worker import vm_hwm_mib


def peak_rss_mib(model: str, feeds: dict[str, np.ndarray], threads: int = 2, with_library: bool = True) -> float:
    """Peak RSS (MiB) of a fresh process that loads `model` and runs it once on `feeds`."""
    with tempfile.TemporaryDirectory(prefix="ice-mem-") as tmp:
        path = Path(tmp) / "feeds.npz"
        np.savez(path, **feeds)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "iceformer.tools.memory",
                str(model),
                str(path),
                str(threads),
                "1" if with_library else "0",
            ],
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"the memory probe for {model} exited with code {proc.returncode}: {tail[0]}")
    return float(proc.stdout.strip().splitlines()[-1])


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
