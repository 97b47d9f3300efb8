"""Per-core attribute settings on an already rewritten model (what ice-calibrate chose): the KnnAttention cores
are numbered in graph order, as ice-rewrite's --layers numbers them; the output is written atomically, never over
the input."""

from __future__ import annotations

import os
from pathlib import Path

import onnx_ir as ir

from ..ops import contract
from ._errors import RewriteError
from ._load import load_model
from ._output import save_atomic


def knn_cores(model: ir.Model) -> list[ir.Node]:
    """The iceformer.KnnAttention nodes of the main graph, in graph order."""
    return [n for n in model.graph if n.domain == contract.DOMAIN and n.op_type == contract.OP_TYPE]


def contract_attr(spec: contract.AttrSpec, value) -> ir.Attr:
    """An onnx-ir attribute of the contract's type for `spec` (int, float or a list of ints)."""
    if spec.type == "ints":
        return ir.AttrInt64s(spec.name, [int(v) for v in value])
    if spec.type == "int":
        return ir.AttrInt64(spec.name, int(value))
    return ir.AttrFloat32(spec.name, float(value))


def check_head_lists(attributes: dict, Hq: int | None, where: str) -> None:
    """Raises RewriteError when a per-head list (head_budgets, head_tail_samples) has other than Hq values: the op
    would refuse the model at session creation or its first call. Hq None (not static): left to the op."""
    for spec in contract.KNN_ATTRIBUTES:
        values = attributes.get(spec.name) if spec.type == "ints" else None
        if values and Hq is not None and len(values) != Hq:
            raise RewriteError(
                f"{where}: {spec.name} has {len(values)} values, expected one per query head (Hq = {Hq})"
            )


def _attr(name: str, value) -> ir.Attr:
    return contract_attr(contract.attribute(name), value)  # KeyError names the unknown attribute


def apply_settings(
    input_path: str | os.PathLike, output_path: str | os.PathLike, per_core: dict[int, dict[str, int | float | list]]
) -> int:
    """Writes `input_path` with per_core[i]'s attributes set on KnnAttention core i; returns the cores changed."""
    src, dst = Path(input_path), Path(output_path)
    if dst.exists() and dst.resolve() == src.resolve():
        raise RewriteError(f"{dst}: the output path is the input path; refusing to overwrite the input")
    model = load_model(src)
    cores = knn_cores(model)
    if not cores:
        raise RewriteError(
            f"{src}: no {contract.DOMAIN}.{contract.OP_TYPE} node (rewrite the model with ice-rewrite first)"
        )
    bad = sorted(i for i in per_core if not 0 <= i < len(cores))
    if bad:
        raise RewriteError(f"{src}: cores {bad} do not exist (the model has {len(cores)})")
    for i, attrs in per_core.items():
        for name, value in attrs.items():
            try:
                cores[i].attributes[name] = _attr(name, value)
            except KeyError as e:
                raise RewriteError(f"core {i}: {e}") from e
    save_atomic(model, dst, src)
    return len(per_core)
