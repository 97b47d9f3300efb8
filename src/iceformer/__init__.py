"""iceformer: k-NN sparse attention (IceFormer) for pretrained Transformers in ONNX Runtime on CPUs.

Public face: the native op (`get_library_path`, `session_options`), its contract and numpy reference, and the
model rewriter (`rewrite`, `RewriteOptions`; CLI `ice-rewrite`).
"""

from .ops import contract, get_library_path, knn_attention_reference, session_options
from .rewriter import RewriteOptions, rewrite

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "contract",
    "get_library_path",
    "knn_attention_reference",
    "session_options",
    "rewrite",
    "RewriteOptions",
]
