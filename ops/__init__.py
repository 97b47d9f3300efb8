"""The KnnAttention op: its contract, its numpy reference and the native library that implements it."""

from . import contract
from ._library import get_library_path, native_contract, session_options, simd_tiers, simd_variant
from .graph import make_attention_model, make_gqa_model, make_knn_attention_model
from .reference import knn_attention_reference, probe_errors_reference

__all__ = [
    "contract",
    "get_library_path",
    "session_options",
    "native_contract",
    "simd_variant",
    "simd_tiers",
    "knn_attention_reference",
    "probe_errors_reference",
    "make_knn_attention_model",
    "make_attention_model",
    "make_gqa_model",
]
