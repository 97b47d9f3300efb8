"""Rewriting attention subgraphs of exported ONNX models into KnnAttention (not implemented yet)."""

__all__: list[str] = []
