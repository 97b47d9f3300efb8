"""ice-rewrite on a model folder: an onnxruntime-genai folder (genai_config.json names the decoder) or a Hugging Face
/ optimum export folder (config.json beside one ONNX model, as `optimum-cli export onnx` writes and
ORTModelForCausalLM loads). The model file is rewritten, the rest of the folder copied.

onnxruntime-genai only loads a custom-op library from within the model folder (an absolute path elsewhere is
refused: "custom_ops_library path is not within an allowed directory"), so for a genai folder the library is copied
in and named relatively in `model.decoder.session_options.custom_ops_library`. An optimum folder is loaded with our
session options instead (`ORTModelForCausalLM.from_pretrained(dst, session_options=iceformer.ops.session_options())`).
The output folder is assembled beside its destination and renamed into place at the end: nothing is half-written,
the input is never touched.
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

GENAI_CONFIG = "genai_config.json"
HF_CONFIG = "config.json"
LIBRARY = "libiceformer_ops.so"


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and any((path / c).is_file() for c in (GENAI_CONFIG, HF_CONFIG))


def _model_files(folder: Path, filename: str) -> set[Path]:
    """The model and its external-data files (replaced by the rewritten ones)."""
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


def _genai_decoder(src: Path) -> tuple[dict, dict, str]:
    """(config, its decoder section, the decoder's file name) of a genai folder."""
    try:
        config = json.loads((src / GENAI_CONFIG).read_text())
        decoder = config["model"]["decoder"]
        return config, decoder, decoder["filename"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RewriteError(f"{src / GENAI_CONFIG}: not a genai config with model.decoder.filename ({e})") from e


def _single_model(src: Path) -> str:
    """The one ONNX model of an export folder; several are ambiguous (rewrite the file that is loaded instead)."""
    models = sorted(p.name for p in src.glob("*.onnx"))
    if len(models) != 1:
        found = ", ".join(models) or "none"
        raise RewriteError(
            f"{src}: an export folder must hold exactly one .onnx model to be rewritten as a folder (found {found}); "
            "rewrite the model file that is loaded instead: ice-rewrite DIR/NAME.onnx OUT/NAME.onnx"
        )
    return models[0]


def decoder_path(src: Path) -> Path:
    """The model file of `src`: src itself, or for a model folder the decoder genai_config.json names (genai) or its
    one .onnx (export)."""
    if not is_model_folder(src):
        return src
    return src / (_genai_decoder(src)[2] if (src / GENAI_CONFIG).is_file() else _single_model(src))


def check_output_folder(src: Path, dst: Path) -> None:
    """Refuses an output folder that exists with content, is a file, or is the input."""
    if dst.exists() and (dst.resolve() == src.resolve() or not dst.is_dir() or any(dst.iterdir())):
        raise RewriteError(f"{dst}: exists (the output folder must be new or empty; never the input)")


def write_folder(src: Path, dst: Path, model) -> list[str]:
    """Writes the folder `src` with its model file replaced by `model` (an onnx-ir model) as the new folder `dst`,
    assembled beside it and renamed into place; a genai folder gets our library and its config entry. Returns notes."""
    genai = (src / GENAI_CONFIG).is_file()
    config, decoder, filename = _genai_decoder(src) if genai else (None, None, _single_model(src))
    check_output_folder(src, dst)
    replaced = _model_files(src, filename)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.ice-rewrite-", dir=dst.parent))
    notes = []
    try:
        for item in src.iterdir():
            if item in replaced or (genai and item.name in (GENAI_CONFIG, LIBRARY)):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        note = save_atomic(model, tmp / filename, src / filename)
        if note:
            notes.append(note)
        if genai:
            shutil.copy2(get_library_path(), tmp / LIBRARY)
            decoder.setdefault("session_options", {})["custom_ops_library"] = LIBRARY
            (tmp / GENAI_CONFIG).write_text(json.dumps(config, indent=4))
        if dst.exists():
            dst.rmdir()  # empty (checked above)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    notes.append(
        f"genai folder: {LIBRARY} copied in and named in {GENAI_CONFIG} "
        "(model.decoder.session_options.custom_ops_library)"
        if genai
        else f"export folder: {filename} rewritten, the rest copied; load it with our session options, e.g. "
        "ORTModelForCausalLM.from_pretrained(folder, session_options=iceformer.ops.session_options())"
    )
    return notes


def rewrite_folder(src: Path, dst: Path, options: _rewrite.RewriteOptions) -> _rewrite.RewriteReport:
    """Rewrites the model folder `src` into the new folder `dst` (which must not exist or be empty)."""
    path = decoder_path(src)
    if not options.dry_run:
        check_output_folder(src, dst)
    model = load_model(path)
    model, report = _rewrite.rewrite_model(model, options)
    report.input = str(src)
    _rewrite.check_outcome(src, report, options)
    if options.dry_run:
        return report
    report.notes.extend(write_folder(src, dst, model))
    report.output = str(dst)
    return report
