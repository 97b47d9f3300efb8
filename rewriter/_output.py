"""Below the rewrite drivers (a single file, a genai folder): writing a model atomically (scratch beside the
destination, validated by onnx.checker or onnxruntime, renamed into place; never over the input)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir
import onnxruntime as ort

from ..ops import session_options
from ._errors import RewriteError

EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of initializers above which weights always go to an external file


def _checker_error(path: Path) -> str | None:
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        return str(e).strip().splitlines()[0]
    return None


def validate(tmp: Path, src: Path) -> str | None:
    """onnx.checker on the output; when it fails and the input fails it too (ORT's optimizer writes nodes such as
    SimplifiedLayerNormalization in the default domain, which onnxruntime runs and the checker rejects), onnxruntime
    loading the output with our library decides instead. Returns a note when the checker was overruled."""
    err = _checker_error(tmp)
    if err is None:
        return None
    before = _checker_error(src)
    if before is None:
        raise RewriteError(f"the rewritten model fails onnx.checker: {err}")
    try:
        ort.InferenceSession(str(tmp), session_options(1), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise RewriteError(f"the rewritten model fails onnx.checker ({err}) and onnxruntime cannot load it: {e}") from e
    return (
        f"onnx.checker rejects the input model already ({before}); the output was validated by loading it in "
        "onnxruntime instead"
    )


def save_atomic(model: ir.Model, out: Path, src: Path) -> str | None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK):
            raise PermissionError("permission denied")
        tmpdir = Path(tempfile.mkdtemp(prefix=".ice-rewrite-", dir=out.parent))
    except OSError as e:
        raise RewriteError(f"{out.parent}: not writable ({e})") from e
    consts = [v.const_value for v in model.graph.initializers.values() if v.const_value is not None]
    big = sum(c.nbytes for c in consts)
    # Keep weights external when the input had them external (a protobuf with embedded weights costs a second
    # copy of them in memory while onnxruntime loads it) or when they are large.
    external = big > EXTERNAL_DATA_THRESHOLD or any(isinstance(c, ir.ExternalTensor) for c in consts)
    try:
        tmp = tmpdir / out.name
        data_name = out.name + ".data" if external else None
        if data_name is None:  # small: one self-contained file (weights read from the input's external data)
            ir.external_data.load_to_model(model)
        ir.save(model, tmp, external_data=data_name)
        note = validate(tmp, src)
        if data_name is not None:
            os.replace(tmpdir / data_name, out.parent / data_name)
        os.replace(tmp, out)
        return note
    finally:
        for f in tmpdir.iterdir():
            f.unlink()
        tmpdir.rmdir()
