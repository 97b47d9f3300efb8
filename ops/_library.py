"""Locating and registering the native KnnAttention library."""

from __future__ import annotations

import ctypes
import importlib.util
import json
from functools import cache
from pathlib import Path

import onnxruntime as ort

_LIB_NAME = "libiceformer_ops.so"


def get_library_path() -> str:
    """Absolute path of the compiled custom-op library installed inside the package."""
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
    return so


@cache
def _cdll() -> ctypes.CDLL:
    lib = ctypes.CDLL(get_library_path())
    lib.IceformerContractJson.restype = ctypes.c_char_p
    lib.IceformerSimdVariant.restype = ctypes.c_char_p
    return lib


def native_contract() -> dict:
    """The contract as the native library registers it (for checks against `contract.as_dict()`)."""
    return json.loads(_cdll().IceformerContractJson().decode())


def simd_variant() -> str:
    """Which kernel variant the library dispatches to on this CPU ("avx512" or "scalar")."""
    return _cdll().IceformerSimdVariant().decode()
