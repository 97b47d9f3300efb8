"""Rewriting the attention cores of exported ONNX models into iceformer.KnnAttention.

from iceformer.rewriter import rewrite, RewriteOptions
report = rewrite("model.onnx", "model.knn.onnx", RewriteOptions(attributes={"top_k": 128}))
"""

from ._api import rewrite
from ._errors import AlreadyRewritten, RewriteError
from ._folder import decoder_path
from ._rewrite import RewriteOptions, RewriteReport, Skip, rewrite_model
from ._settings import CORE_TYPES, apply_settings, knn_cores, no_cores

__all__ = [
    "rewrite",
    "rewrite_model",
    "RewriteOptions",
    "RewriteReport",
    "RewriteError",
    "AlreadyRewritten",
    "Skip",
    "apply_settings",
    "knn_cores",
    "no_cores",
    "CORE_TYPES",
    "decoder_path",
]
