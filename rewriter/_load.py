"""Reading the input model, refusing what is not a complete ONNX model before anything is rewritten or written:
a missing or empty file, bytes that do not decode, a model without a graph, tensors whose stored bytes disagree
with their declared shape (a truncated file, a forged huge dimension), external weights that are missing or
shorter than declared."""

from __future__ import annotations

import math
from pathlib import Path

import onnx
import onnx_ir as ir

from ._errors import RewriteError

# TensorProto fields holding one entry per element (sub-byte types pack several per entry: not checked here).
_ONE_PER_ENTRY = {
    onnx.TensorProto.FLOAT: "float_data",
    onnx.TensorProto.DOUBLE: "double_data",
    onnx.TensorProto.INT64: "int64_data",
    onnx.TensorProto.UINT64: "uint64_data",
    onnx.TensorProto.INT32: "int32_data",
    onnx.TensorProto.INT16: "int32_data",
    onnx.TensorProto.INT8: "int32_data",
    onnx.TensorProto.UINT16: "int32_data",
    onnx.TensorProto.UINT8: "int32_data",
    onnx.TensorProto.BOOL: "int32_data",
    onnx.TensorProto.FLOAT16: "int32_data",
    onnx.TensorProto.BFLOAT16: "int32_data",
    onnx.TensorProto.STRING: "string_data",
}


def load_model(path: Path) -> ir.Model:
    if not path.is_file():
        raise RewriteError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise RewriteError(f"{path}: empty file, not an ONNX model")
    try:
        model = ir.load(path)
    except Exception as e:  # protobuf decode errors come in several types
        raise RewriteError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    if len(model.graph) == 0:
        raise RewriteError(f"{path}: the model has no graph nodes (not an exported model, or not ONNX at all)")
    for name, tensor in _tensors(model):
        if problem := _tensor_problem(tensor, path.parent.resolve()):
            raise RewriteError(f"{path}: tensor {name!r} {problem}")
    return model


def _tensors(model: ir.Model):
    for graph in (model.graph, *model.graph.subgraphs()):
        for name, value in graph.initializers.items():
            if value.const_value is not None:
                yield name, value.const_value
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and "value" in node.attributes:
            yield f"{node.name or 'Constant'}.value", node.attributes["value"].as_tensor()


def _declared_nbytes(tensor: ir.TensorProtocol) -> int | None:
    if tensor.dtype == ir.DataType.STRING or any(not isinstance(d, int) for d in tensor.shape):
        return None
    return math.ceil(math.prod(tensor.shape) * tensor.dtype.bitwidth / 8)


def _tensor_problem(tensor: ir.TensorProtocol, model_dir: Path) -> str | None:
    """Why the tensor's stored bytes cannot hold its declared shape, or None."""
    declared = _declared_nbytes(tensor)
    shape = "x".join(map(str, tensor.shape)) or "scalar"
    if isinstance(tensor, ir.ExternalTensor):
        file = Path(tensor.base_dir or model_dir) / tensor.location
        if not file.is_file():
            return f"keeps its weights in {tensor.location}, which is missing (expected at {file})"
        have = file.stat().st_size - (tensor.offset or 0)
        want = tensor.length if tensor.length is not None else declared
        if want is not None and have < want:
            return (
                f"needs {want} bytes of {tensor.location} from offset {tensor.offset or 0}, but the file holds "
                f"{max(have, 0)} there (truncated or a different weights file)"
            )
        if declared is not None and tensor.length is not None and tensor.length != declared:
            return f"declares shape {shape} ({declared} bytes) but {tensor.length} bytes of external data"
        return None
    proto = getattr(tensor, "raw", None)
    if not isinstance(proto, onnx.TensorProto) or declared is None:
        return None
    if proto.HasField("raw_data"):
        stored = len(proto.raw_data)
        return None if stored == declared else f"declares shape {shape} ({declared} bytes) but stores {stored} bytes"
    field = _ONE_PER_ENTRY.get(proto.data_type)
    if field is not None and len(getattr(proto, field)) != math.prod(tensor.shape):
        return f"declares shape {shape} but stores {len(getattr(proto, field))} elements"
    return None
