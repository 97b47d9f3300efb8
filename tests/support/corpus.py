"""The rewriter's coverage corpus: tiny random-weight models x exporters x opsets (and ORT's transformers optimizer),
each file rewritten with default options, its replaced cores counted and its outputs compared with the original's
in onnxruntime, with our library and without it, beyond every sliding window and with padding.

tests/rewriter/test_corpus.py asserts every case; `python -m tests.support.corpus [--only SUBSTRING]` (from the repository root) prints the
coverage table (model x exporter x opset: cores expected / replaced / equal). Exports are cached under
$ICEFORMER_CACHE_DIR/corpus/<versions> (a new torch, transformers, optimum or onnxruntime starts a new cache)."""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from tests.support.tiny_models import build_any, export, save_with_head

RECIPE = 1  # bump when an export recipe below changes, so cached exports are rebuilt

# Opsets each exporter writes as asked: TorchScript stops at 20; the dynamo exporter writes opset 18 when asked
# for 14-17 (its down-conversion gives up on these graphs), so those are not distinct cases.
OPSETS = {
    "torchscript": range(14, 21),
    "dynamo": range(18, 25),
    "optimum": range(14, 21),  # optimum-onnx 0.1.0 drives the TorchScript exporter
    "optimum-past": range(14, 21),
}
KINDS = ("bert", "gpt2", "llama", "qwen3", "qwen2_window", "mistral", "gemma3", "bart", "t5")
WINDOW = 3  # every sliding-window model's window (tiny.build_sliding): feeds run well beyond it
ENCODER_DECODER = ("bart", "t5")

# (kinds, exporter, why) left out of the corpus.
LEFT_OUT = [
    (
        ("gpt2", "llama", "qwen3", "qwen2_window", "mistral", "gemma3"),
        "torchscript",
        "torch 2.13's TorchScript exporter fails inside transformers 4.57's mask construction (unordered_map::at); "
        "optimum's TorchScript exports of the same models are in the corpus",
    ),
    (("bart",), "dynamo", "torch.export fails on BART's decoder mask with dynamic shapes"),
    (("bert",), "optimum-past", "an encoder has no past"),
    (
        ("t5",),
        "optimum + ORT optimizer",
        "ORT's optimizer writes com.microsoft.RelativePositionBias, which onnxruntime's CPU provider cannot run (the "
        "original fails to load); its fused Attention with attention_bias is covered by a hand-built test",
    ),
    (
        ("bart",),
        "optimum-past + ORT optimizer",
        "ORT 1.32's bart optimizer raises a TypeError on optimum's past decoders",
    ),
    (
        ("llama", "qwen2_window", "mistral", "gemma3"),
        "optimum + ORT optimizer",
        "ORT's optimizer has no model type for them (its LLaMA path is a separate exporter, onnxruntime-genai's form, "
        "covered by the GroupQueryAttention tests)",
    ),
]
# (kind, exporter, opset, model_type): exports passed through onnxruntime.transformers.optimizer as well.
OPTIMIZED = [
    ("bert", "optimum", 17, "bert"),
    ("gpt2", "optimum", 17, "gpt2"),
    ("gpt2", "optimum-past", 17, "gpt2"),
    ("bart", "optimum", 17, "bart"),
    ("qwen3", "optimum-past", 17, "qwen3"),
]


@dataclass(frozen=True)
class Case:
    kind: str
    exporter: str
    opset: int
    optimizer: str | None = None  # ORT transformers optimizer model_type, when passed through it

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.exporter}-{self.opset}" + ("-ortopt" if self.optimizer else "")

    def expected(self) -> dict[str, int]:
        """Attention cores per file, all of which must be replaced: 2 layers of self-attention per stack; an
        encoder-decoder also has 2 of cross-attention; a merged decoder holds its cores once per If branch."""
        if self.exporter in ("torchscript", "dynamo"):
            return {"model.onnx": 6 if self.kind in ENCODER_DECODER else 2}
        if self.kind not in ENCODER_DECODER:
            return {"model.onnx": 2}
        files = {"encoder_model.onnx": 2, "decoder_model.onnx": 4}
        if self.exporter == "optimum-past":
            files.update({"decoder_with_past_model.onnx": 4, "decoder_model_merged.onnx": 8})
        return files

    def options(self):
        from iceformer.rewriter import RewriteOptions

        # T5's self-attention masks carry the relative-position bias: exact-only ops, so every core is replaced
        return RewriteOptions(allow_bias=self.kind == "t5")


def _left_out(kind: str, exporter: str) -> str | None:
    return next((why for kinds, ex, why in LEFT_OUT if kind in kinds and ex == exporter), None)


CASES = [
    Case(kind, exporter, opset)
    for exporter, opsets in OPSETS.items()
    for kind in KINDS
    if _left_out(kind, exporter) is None
    for opset in opsets
] + [Case(kind, exporter, opset, model_type) for kind, exporter, opset, model_type in OPTIMIZED]


def _cache_root() -> Path:
    from iceformer.models._cache import cache_dir

    stamp = "-".join(version(p) for p in ("torch", "transformers", "optimum-onnx", "onnxruntime", "onnx"))
    return cache_dir("corpus", hashlib.sha256(f"{RECIPE}-{stamp}".encode()).hexdigest()[:12])


def _export_into(case: Case, folder: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if case.exporter in ("torchscript", "dynamo"):
            export(build_any(case.kind), folder / "model.onnx", case.opset, case.exporter)
            return
        import os

        from optimum.exporters.onnx import main_export

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        hf = save_with_head(case.kind, folder / "hf")
        task = {"bert": "feature-extraction", "bart": "text2text-generation", "t5": "text2text-generation"}.get(
            case.kind, "text-generation"
        ) + ("-with-past" if case.exporter == "optimum-past" else "")
        main_export(str(hf), output=str(folder), task=task, opset=case.opset, do_validation=False)
        shutil.rmtree(hf)
    if case.optimizer:
        from onnxruntime.transformers.optimizer import optimize_model

        for f in folder.glob("*.onnx"):
            optimize_model(str(f), model_type=case.optimizer, num_heads=4, hidden_size=64).save_model_to_file(str(f))


def exported(case: Case) -> dict[str, Path]:
    """file name -> path of the case's export (built once per versions and recipe; assembled beside, renamed in)."""
    folder = _cache_root() / case.id
    if not folder.is_dir():
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{case.id}."))
        try:
            _export_into(case, tmp)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {f.name: f for f in sorted(folder.glob("*.onnx"))}


BATCH, NEW, PAST, ENCODER = 3, 17, 7, 13  # new tokens and encoder length beyond the window and any rotary period


def _dim(name: str | int) -> int:
    if isinstance(name, int) and name > 0:
        return name
    sizes = {"batch": BATCH, "past": PAST, "encoder": ENCODER, "seq": NEW}
    if "+" in name:
        return sum(_dim(part.strip()) for part in name.split("+"))
    for key, size in sizes.items():  # in this order: "past_decoder_sequence_length" is a past length
        if key in name:
            return size
    raise ValueError(f"no size for dimension {name!r}")


def _mask(length: int, past: int) -> np.ndarray:
    """[B, length] with no padding, left padding and (without a past) right padding: rows 0, 1, 2."""
    mask = np.ones((BATCH, length), np.int64)
    mask[1, :2] = 0
    if past:
        mask[2, : past - 2] = 0  # left padding inside the past, so every new token is real
    else:
        mask[2, length - 3 :] = 0
    return mask


def feeds(model) -> list[dict[str, np.ndarray]]:
    """Seeded inputs for every graph input, by name (one set per If branch of a merged decoder)."""
    import onnx

    rng = np.random.default_rng(0)
    names = [i.name for i in model.graph.input]
    past = PAST if any("past" in n for n in names) else 0
    out: dict[str, np.ndarray] = {}
    for i in model.graph.input:
        shape = [_dim(d.dim_param or d.dim_value) for d in i.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        if i.name in ("input_ids", "decoder_input_ids"):
            out[i.name] = rng.integers(0, 100, shape).astype(dtype)
        elif i.name == "attention_mask":
            out[i.name] = _mask(shape[1], past).astype(dtype)
        elif i.name == "encoder_attention_mask":
            out[i.name] = _mask(shape[1], 0).astype(dtype)
        elif i.name == "token_type_ids":
            out[i.name] = np.zeros(shape, dtype)
        elif i.name == "position_ids":
            out[i.name] = np.tile(np.arange(past, past + shape[1]), (BATCH, 1)).astype(dtype)
        elif i.name == "use_cache_branch":
            continue
        elif np.issubdtype(dtype, np.floating):
            out[i.name] = rng.standard_normal(shape).astype(dtype)
        else:
            raise ValueError(f"no feed for input {i.name!r}")
    if "use_cache_branch" not in names:
        return [out]
    return [{**out, "use_cache_branch": np.array([flag])} for flag in (False, True)]


def _valid(value: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """`value` with the entries of padded query rows or padded keys zeroed: rows that see no key differ by
    definition (the original's softmax over nothing, our zeros) and padded keys are never read."""
    if mask is None or value.ndim < 2 or value.shape[0] != BATCH:
        return value
    valid = mask.astype(bool)
    if value.shape[1] == valid.shape[1] or value.shape[1] == NEW:  # [B, S or T, ...]
        rows = valid[:, -value.shape[1] :].reshape(BATCH, value.shape[1], *[1] * (value.ndim - 2))
        return np.where(rows, value, 0)
    if value.ndim == 4 and value.shape[2] <= valid.shape[1]:  # presents [B, H, T, D]
        keys = valid[:, -value.shape[2] :][:, None, :, None]
        return np.where(keys, value, 0)
    return value


@dataclass
class FileResult:
    file: str
    expected: int
    replaced: int
    equal: bool
    detail: str = ""  # the skips, or where outputs differ


def check(case: Case, workdir: Path) -> list[FileResult]:
    """Rewrite every file of the case and compare it with the original (with the library and without it)."""
    import onnx
    import onnxruntime as ort
    from iceformer.rewriter import rewrite

    import iceformer

    results = []
    for name, expected_cores in case.expected().items():
        src = exported(case)[name]
        out = workdir / f"{case.id}.{name}"
        report = rewrite(src, out, case.options())
        detail = "; ".join(f"{s.node}: {s.reason}" for s in report.skipped)
        equal = True
        model = onnx.load(src, load_external_data=False)
        base = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
        ours = [
            ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
            for so in (iceformer.session_options(2), ort.SessionOptions())
        ]
        for feed in feeds(model):
            mask = feed.get("attention_mask")
            want = base.run(None, feed)
            for session, lib in zip(ours, ("with the library", "without it")):
                for output, got, ref in zip(base.get_outputs(), session.run(None, feed), want):
                    a, b = _valid(got, mask), _valid(ref, mask)
                    if not np.allclose(a, b, atol=2e-5, rtol=1e-4):
                        equal = False
                        detail += f" {output.name} differs {lib} (max {np.nanmax(np.abs(a - b)):.3g})"
        results.append(FileResult(name, expected_cores, len(report.replaced), equal, detail.strip()))
    return results


def _table(rows: dict[Case, list[FileResult] | str]) -> str:
    """Markdown: one row per model x exporter (x optimizer), one column per opset; a cell is replaced/expected and
    = (equal outputs) or != ; a multi-file export sums its files."""
    opsets = range(14, 25)
    groups: dict[tuple, dict[int, str]] = {}
    for case, result in rows.items():
        cells = groups.setdefault((case.kind, case.exporter + (" + ORT optimizer" if case.optimizer else "")), {})
        if isinstance(result, str):
            cells[case.opset] = "error"
            continue
        replaced, expected = sum(r.replaced for r in result), sum(r.expected for r in result)
        cells[case.opset] = f"{replaced}/{expected} " + ("=" if all(r.equal for r in result) else "!=")
    lines = ["| model | exporter | " + " | ".join(map(str, opsets)) + " |", "|---|---|" + "---|" * len(opsets)]
    for (kind, exporter), cells in groups.items():
        lines.append(f"| {kind} | {exporter} | " + " | ".join(cells.get(o, "") for o in opsets) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the cases whose id contains this")
    args = parser.parse_args(argv)
    rows: dict[Case, list[FileResult] | str] = {}
    with tempfile.TemporaryDirectory() as work:
        for case in CASES:
            if args.only and args.only not in case.id:
                continue
            try:
                rows[case] = check(case, Path(work))
            except Exception as e:  # the table reports it; the test raises it
                rows[case] = f"{type(e).__name__}: {e}"
            result = rows[case]
            ok = not isinstance(result, str) and all(r.equal and r.replaced == r.expected for r in result)
            print(case.id, "ok" if ok else result, flush=True)
    print(_table(rows))
    for kinds, exporter, why in LEFT_OUT:
        print(f"- left out: {', '.join(kinds)} through {exporter}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
