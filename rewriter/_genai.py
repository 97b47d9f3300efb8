"""ice-rewrite on an onnxruntime-genai model folder: the decoder's GroupQueryAttention nodes become ours, the rest of
the folder is copied, and genai_config.json loads our library.

onnxruntime-genai only loads a custom-op library from within the model folder (an absolute path elsewhere is
refused: "custom_ops_library path is not within an allowed directory"), so the library is copied into the output
folder and named relatively in `model.decoder.session_options.custom_ops_library`. The output folder is assembled
beside its destination and renamed into place at the end: nothing is half-written, the input is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import onnx

from ..ops import get_library_path
from . import _rewrite
from ._errors import RewriteError
from ._load import load_model
from ._output import save_atomic

CONFIG = "genai_config.json"
LIBRARY = "libiceformer_ops.so"


def is_genai_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file()


def _model_files(folder: Path, filename: str) -> set[Path]:
    """The decoder model and its external-data files (replaced by the rewritten ones)."""
    files = {folder / filename}
    try:
        proto = onnx.load(folder / filename, load_external_data=False)
    except Exception as e:
        raise RewriteError(f"{folder / filename}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                files.add(folder / entry.value)
    return files


def rewrite_folder(src: Path, dst: Path, options: _rewrite.RewriteOptions) -> _rewrite.RewriteReport:
    """Rewrites the genai model folder `src` into the new folder `dst` (which must not exist or be empty)."""
    try:
        config = json.loads((src / CONFIG).read_text())
        decoder = config["model"]["decoder"]
        filename = decoder["filename"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RewriteError(f"{src / CONFIG}: not a genai config with model.decoder.filename ({e})") from e
    if (
        not options.dry_run
        and dst.exists()
        and (dst.resolve() == src.resolve() or not dst.is_dir() or any(dst.iterdir()))
    ):
        raise RewriteError(f"{dst}: exists (the output folder must be new or empty; never the input)")
    model = load_model(src / filename)
    model, report = _rewrite.rewrite_model(model, options)
    report.input = str(src)
    _rewrite.check_outcome(src, report, options)
    if options.dry_run:
        return report
    replaced = _model_files(src, filename)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.ice-rewrite-", dir=dst.parent))
    try:
        for item in src.iterdir():
            if item in replaced or item.name == CONFIG:
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        note = save_atomic(model, tmp / filename, src / filename)
        if note:
            report.notes.append(note)
        shutil.copy2(get_library_path(), tmp / LIBRARY)
        decoder.setdefault("session_options", {})["custom_ops_library"] = LIBRARY
        (tmp / CONFIG).write_text(json.dumps(config, indent=4))
        if dst.exists():
            dst.rmdir()  # empty (checked above)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.output = str(dst)
    report.notes.append(
        f"genai folder: {LIBRARY} copied in and named in {CONFIG} (model.decoder.session_options.custom_ops_library)"
    )
    return report
