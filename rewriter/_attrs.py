"""Attributes as the op contract types them, for every rewrite stage that writes k-NN attributes."""

from __future__ import annotations

import onnx_ir as ir

from ..ops import contract
from ._errors import RewriteError


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
