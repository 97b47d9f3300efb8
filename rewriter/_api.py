"""The public entry point: `rewrite()` checks the paths and sends a model folder (genai or optimum) to _folder, an
ONNX file to _rewrite (both write through _output)."""

from __future__ import annotations

import os
from pathlib import Path

from . import _folder
from ._errors import RewriteError
from ._rewrite import RewriteOptions, RewriteReport, rewrite_file


def rewrite(
    input_path: str | os.PathLike, output_path: str | os.PathLike | None = None, options: RewriteOptions | None = None
) -> RewriteReport:
    """Rewrites the attention cores of the ONNX file `input_path` into our ops and writes `output_path` (atomically;
    never over the input). A model folder - onnxruntime-genai's (genai_config.json; the new folder loads our
    library) or an export folder (config.json and one .onnx, as optimum writes) - is rewritten into a new folder.
    Raises RewriteError when nothing can be rewritten."""
    options = options or RewriteOptions()
    src = Path(input_path)
    if output_path is None and not options.dry_run:
        raise RewriteError("an output path is needed (or a dry run)")
    dst = Path(output_path) if output_path is not None else None
    if dst is not None and dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise RewriteError(f"{dst}: the output path is the input path; refusing to overwrite the input")
    if _folder.is_model_folder(src):
        return _folder.rewrite_folder(src, dst if dst is not None else src, options)
    return rewrite_file(src, dst, options)
