"""Per-core attribute settings on an already rewritten model (what ice-calibrate chose): the cores (KnnAttention,
or GroupQueryAttention in a genai decoder) are numbered in graph order, as ice-rewrite's --layers numbers them; the
output (a file, or a folder for a model folder) is written atomically, never over the input."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx_ir as ir

from ..ops import contract
from ._attrs import contract_attr
from ._errors import RewriteError
from ._folder import check_output_folder, decoder_path, is_model_folder, write_folder
from ._load import load_model
from ._output import save_atomic

CORE_TYPES = (contract.OP_TYPE, contract.GQA_OP_TYPE)


def knn_cores(model: ir.Model | onnx.ModelProto) -> list:
    """Our attention nodes of the main graph (iceformer.KnnAttention / GroupQueryAttention), in graph order: onnx-ir
    nodes, or NodeProtos of an onnx.ModelProto (ice-calibrate runs protos)."""
    nodes = model.graph.node if isinstance(model, onnx.ModelProto) else model.graph
    return [n for n in nodes if n.domain == contract.DOMAIN and n.op_type in CORE_TYPES]


def no_cores(path) -> RewriteError:
    return RewriteError(
        f"{path}: no {contract.DOMAIN}.{contract.OP_TYPE} or {contract.DOMAIN}.{contract.GQA_OP_TYPE} node "
        "(rewrite the model with ice-rewrite first)"
    )


def _attr(op_type: str, name: str, value) -> ir.Attr:
    spec = contract.gqa_attribute if op_type == contract.GQA_OP_TYPE else contract.attribute
    return contract_attr(spec(name), value)  # KeyError names the unknown attribute


def apply_settings(
    input_path: str | os.PathLike, output_path: str | os.PathLike, per_core: dict[int, dict[str, int | float | list]]
) -> int:
    """Writes `input_path` (a model file or folder) with per_core[i]'s attributes set on core i; returns the cores
    changed."""
    src, dst = Path(input_path), Path(output_path)
    if dst.exists() and dst.resolve() == src.resolve():
        raise RewriteError(f"{dst}: the output path is the input path; refusing to overwrite the input")
    folder = is_model_folder(src)
    if folder:
        check_output_folder(src, dst)
    model = load_model(decoder_path(src))
    cores = knn_cores(model)
    if not cores:
        raise no_cores(src)
    bad = sorted(i for i in per_core if not 0 <= i < len(cores))
    if bad:
        raise RewriteError(f"{src}: cores {bad} do not exist (the model has {len(cores)})")
    for i, attrs in per_core.items():
        for name, value in attrs.items():
            try:
                cores[i].attributes[name] = _attr(cores[i].op_type, name, value)
            except KeyError as e:
                raise RewriteError(f"core {i}: {e}") from e
    if folder:
        write_folder(src, dst, model)
    else:
        save_atomic(model, dst, src)
    return len(per_core)
