"""Locating and registering the native KnnAttention library."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
from functools import cache
from pathlib import Path

import onnxruntime as ort

_LIB_NAME = "libiceformer_ops.so"
# Another build of the library (a sanitizer build, a debug build) used instead of the installed one.
LIBRARY_ENV = "ICEFORMER_OPS_LIBRARY"


def get_library_path() -> str:
    """Absolute path of the compiled custom-op library installed inside the package (or the file named by the
    environment variable ICEFORMER_OPS_LIBRARY)."""
    override = os.environ.get(LIBRARY_ENV)
    if override:
        if not Path(override).is_file():
            raise FileNotFoundError(f"{LIBRARY_ENV}={override} is not a file")
        return str(Path(override).resolve())
    # Editable installs keep the library in site-packages and the sources in the checkout: search both.
    spec = importlib.util.find_spec(__package__)
    places = list(spec.submodule_search_locations or []) if spec else []
    places.append(str(Path(__file__).resolve().parent))
    for place in places:
        path = Path(place) / _LIB_NAME
        if path.is_file():
            return str(path.resolve())
    raise FileNotFoundError(
        f"{_LIB_NAME} not found in {places}: the package was installed without its native library. "
        "Reinstall from source with `pip install .` (see README: building)."
    )


def session_options(
    intra_op_num_threads: int | None = None,
    *,
    options: ort.SessionOptions | None = None,
    graph_optimization_level: ort.GraphOptimizationLevel | None = None,
) -> ort.SessionOptions:
    """`onnxruntime.SessionOptions` with the KnnAttention library registered (a new one unless given)."""
    so = options if options is not None else ort.SessionOptions()
    if intra_op_num_threads is not None:
        so.intra_op_num_threads = int(intra_op_num_threads)
    if graph_optimization_level is not None:
        so.graph_optimization_level = graph_optimization_level
    so.register_custom_ops_library(get_library_path())
    if sanitized():
        # ORT's arena sub-allocates tensors from large blocks, hiding overruns from AddressSanitizer.
        so.enable_cpu_mem_arena = False
    return so


def sanitized() -> bool:
    """Whether the loaded library is a sanitizer build (cmake -DICEFORMER_SANITIZE=ON; see README)."""
    return bool(_cdll().IceformerSanitized())


@cache
def _cdll() -> ctypes.CDLL:
    lib = ctypes.CDLL(get_library_path())
    lib.IceformerContractJson.restype = ctypes.c_char_p
    lib.IceformerGqaContractJson.restype = ctypes.c_char_p
    lib.IceformerSimdVariant.restype = ctypes.c_char_p
    lib.IceformerSimdTiers.restype = ctypes.c_char_p
    lib.IceformerSimdPvBf16.restype = ctypes.c_int
    lib.IceformerKnnSelect.restype = ctypes.c_int
    lib.IceformerKthLargestInt.restype = ctypes.c_int
    lib.IceformerSanitized.restype = ctypes.c_int
    lib.IceformerPvTileBf16.restype = ctypes.c_int
    return lib


def native_contract(gqa: bool = False) -> dict:
    """A contract as the native library registers it (for checks against `contract.as_dict()` /
    `contract.gqa_as_dict()`)."""
    return json.loads((_cdll().IceformerGqaContractJson() if gqa else _cdll().IceformerContractJson()).decode())


# Every SIMD tier the library knows, best first (simd_dispatch.cc); ICEFORMER_SIMD=<tier> forces one, "auto" (or
# unset) takes the best this CPU runs. avx512-hwy (Highway's AVX-512 build) is only used when forced.
SIMD_TIERS = ("avx512-vnni-bf16", "avx512-vnni", "avx512", "avx512-hwy", "avx2-vnni", "avx2", "neon", "scalar")
SIMD_ENV = "ICEFORMER_SIMD"


def simd_variant() -> str:
    """The SIMD tier the library dispatches to in this process (one of SIMD_TIERS: the best this CPU runs, or the
    one ICEFORMER_SIMD forces)."""
    return _cdll().IceformerSimdVariant().decode()


def _simd_pv_bf16() -> bool:
    """Whether the dispatched tier runs the k-NN path's P V in bfloat16 (only where the CPU has bfloat16 dot
    products; the other tiers run it in fp32)."""
    return bool(_cdll().IceformerSimdPvBf16())


def simd_tiers() -> list[str]:
    """The SIMD tiers this library runs on this CPU, best first (the last is always "scalar", the reference)."""
    return _cdll().IceformerSimdTiers().decode().split(",")


def knn_select(q, k, *, is_causal: int = 0, rows=None, scale: float | None = None, **attrs):
    """Keys the k-NN path attends to for query `rows` of one head (default: all S): (ids [len(rows), cap] padded
    with -1, counts [len(rows)]). The op's own driver runs, over the query blocks holding those rows, and its k-NN
    paths report each row's set (what the op computes with, whatever the attributes).

    attrs: KnnAttention attributes over the contract defaults. Low-rank search (search=0): the keys of the row's
    block set it may see; DCI (search=1): its sinks, window and retrieved top_k. All visible keys for a row that went
    exact after all (its block's set did not pay, or its tail estimate exceeded tail_limit); none for rows that run
    exact because they see too few keys (min_keys), or when the whole call does. The tail sample is not reported.
    q: [S, D], k: [T, D] float32; scale as the op's (absent: 1/sqrt(D)), which the tail test and its fallbacks
    depend on. Masks are not supported here.
    """
    import numpy as np

    from . import contract

    a = {**contract.attribute_defaults(), **attrs}
    lists = [spec.name for spec in contract.KNN_ATTRIBUTES if spec.type == "ints" and len(a[spec.name])]
    if lists:
        raise ValueError(f"knn_select runs one head: set its values as scalars, not {lists}")
    scalars = contract.KNN_SCALAR_ATTRIBUTES
    values = (ctypes.c_double * len(scalars))(*(a[spec.name] for spec in scalars))
    q = np.ascontiguousarray(q, dtype=np.float32)
    k = np.ascontiguousarray(k, dtype=np.float32)
    S, D = q.shape
    T = k.shape[0]
    rows = np.arange(S, dtype=np.int64) if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
    if rows.size and (np.any(np.diff(rows) <= 0) or rows[0] < 0 or rows[-1] >= S):
        raise ValueError(f"rows must be strictly ascending in [0, {S})")
    cap = max(T, 1)  # a row that goes exact attends every key it may see
    out = np.full((rows.size, cap), -1, dtype=np.int32)
    counts = np.zeros(rows.size, dtype=np.int32)
    err = ctypes.create_string_buffer(512)
    p = lambda a, t: a.ctypes.data_as(ctypes.POINTER(t))  # noqa: E731
    rc = _cdll().IceformerKnnSelect(
        p(q, ctypes.c_float),
        p(k, ctypes.c_float),
        ctypes.c_int64(S),
        ctypes.c_int64(T),
        ctypes.c_int64(D),
        ctypes.c_int64(is_causal),
        ctypes.c_float(D**-0.5 if scale is None else scale),
        values,
        ctypes.c_int64(len(values)),
        p(rows, ctypes.c_int64),
        ctypes.c_int64(rows.size),
        p(out, ctypes.c_int32),
        ctypes.c_int64(cap),
        p(counts, ctypes.c_int32),
        err,
        ctypes.c_int64(512),
    )
    if rc != 0:
        raise ValueError(err.value.decode() or "IceformerKnnSelect failed")
    return out, counts


def _kth_largest_int(values, k: int) -> float:
    """The dispatched kernel that sets the low-rank scan's per-row thresholds: the k-th largest of integer-valued
    float32 `values` in (-2^24, 2^24) (for tests of its edge cases)."""
    import numpy as np

    v = np.array(values, dtype=np.float32).ravel()  # a copy: the kernel overwrites it
    out = ctypes.c_float()
    if (
        _cdll().IceformerKthLargestInt(
            v.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            ctypes.c_int64(v.size),
            ctypes.c_int64(k),
            ctypes.byref(out),
        )
        != 0
    ):
        raise ValueError(f"k must be in [1, {v.size}] and the values integers in (-2^24, 2^24); got k={k}")
    return out.value


def _pv_tile_bf16(p, v, o=None):
    """The dispatched bfloat16 P V kernel of the k-NN path: o + P V with P [rows, cols] and V [cols, dv] rounded to
    bfloat16, accumulated in float32 (for tests of the kernel against a float64 reference)."""
    import numpy as np

    p = np.ascontiguousarray(p, dtype=np.float32)
    v = np.ascontiguousarray(v, dtype=np.float32)
    if p.ndim != 2 or v.ndim != 2 or p.shape[1] != v.shape[0]:
        raise ValueError(f"P must be [rows, cols] and V [cols, dv]; got {p.shape} and {v.shape}")
    out = np.zeros((p.shape[0], v.shape[1]), np.float32) if o is None else np.array(o, dtype=np.float32)
    f = ctypes.POINTER(ctypes.c_float)
    _cdll().IceformerPvTileBf16(
        p.ctypes.data_as(f),
        ctypes.c_int64(p.shape[0]),
        ctypes.c_int64(p.shape[1]),
        v.ctypes.data_as(f),
        ctypes.c_int64(v.shape[1]),
        out.ctypes.data_as(f),
    )
    return out
