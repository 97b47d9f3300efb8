"""Tiny random-weight Hugging Face models exported at test time (torch 2.13 CPU + transformers), once per session."""

import warnings
from pathlib import Path

import pytest


def _export(model, path: Path, opset: int, exporter: str = "dynamo") -> Path:
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            name = type(self.m).__name__
            extra = {} if name == "T5EncoderModel" else {"use_cache": False}
            if (
                name.startswith("Bart") or name == "T5Model"
            ):  # encoder-decoder: the decoder reads the first half (S != T in cross-attention)
                extra["decoder_input_ids"] = input_ids[:, : input_ids.shape[1] // 2]
            return self.m(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state

    ids = torch.randint(0, 100, (2, 24))
    mask = torch.ones(2, 24, dtype=torch.long)
    batch, seq = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("seq", min=2, max=512)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(
                Wrapper(model.eval()),
                (ids, mask),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamo=False,
                opset_version=opset,
                dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
            )
        else:
            torch.onnx.export(
                Wrapper(model.eval()),
                (ids, mask),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamo=True,
                opset_version=opset,
                optimize=False,
                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            )
    return path


MODELS = {
    # name: (factory, opset, attention cores expected[, exporter (default dynamo)])
    "llama_gqa": ("llama", 18, 2),
    "gpt2": ("gpt2", 18, 2),
    "bert": ("bert", 18, 2),
    "llama_attention23": ("llama_sdpa", 23, 2),
    "bert_torchscript17": ("bert", 17, 2, "torchscript"),
    "bert_torchscript14": ("bert", 14, 2, "torchscript"),  # Shape has no start/end before opset 15
    # encoder self (padding), decoder self (causal from positions), cross-attention (padding, S != T): 2 layers each
    "bart_torchscript17": ("bart", 17, 6, "torchscript"),
}
# Not covered: GPT-2 and LLaMA through the TorchScript exporter (torch 2.13 + transformers 4.57 fail inside the
# exporter with "unordered_map::at", in transformers' mask construction); BART through dynamo (torch.export fails in
# transformers' decoder mask with dynamic shapes).


def _build(kind: str):
    import torch
    from transformers import (
        BartConfig,
        BartModel,
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2Model,
        LlamaConfig,
        LlamaModel,
        T5Config,
        T5EncoderModel,
        T5Model,
    )

    torch.manual_seed(0)
    if kind == "bart":
        cfg = BartConfig(
            vocab_size=100,
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            max_position_embeddings=512,
        )
        return BartModel._from_config(cfg, attn_implementation="eager")
    if kind in ("t5_encoder", "t5"):  # relative-position bias folded into the mask: a bias, not a mask
        cfg = T5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4)
        return (T5EncoderModel if kind == "t5_encoder" else T5Model)._from_config(cfg, attn_implementation="eager")
    if kind.startswith("llama"):
        cfg = LlamaConfig(
            vocab_size=100,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
        )
        return LlamaModel._from_config(cfg, attn_implementation="sdpa" if kind == "llama_sdpa" else "eager")
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=512)
        return GPT2Model._from_config(cfg, attn_implementation="eager")
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,
    )
    return BertModel._from_config(cfg, attn_implementation="eager")


# Sliding-window decoders (window 3, GQA 4/2), dynamo at opset 18: name -> (factory, window per core in graph order).
SLIDING = {
    "mistral": ("mistral", [3, 3]),  # every layer windowed
    "qwen2_window": ("qwen2_window", [-1, 3]),  # layers from max_window_layers = 1 on
    "gemma3": ("gemma3", [3, -1]),  # sliding, then global
}


def _build_sliding(kind: str):
    import torch
    from transformers import Gemma3TextConfig, Gemma3TextModel, MistralConfig, MistralModel, Qwen2Config, Qwen2Model

    torch.manual_seed(0)
    common = dict(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        sliding_window=3,
    )
    if kind == "mistral":
        return MistralModel._from_config(MistralConfig(**common), attn_implementation="eager")
    if kind == "qwen2_window":
        return Qwen2Model._from_config(
            Qwen2Config(**common, use_sliding_window=True, max_window_layers=1), attn_implementation="eager"
        )
    cfg = Gemma3TextConfig(**common, head_dim=16, layer_types=["sliding_attention", "full_attention"])
    return Gemma3TextModel._from_config(cfg, attn_implementation="eager")


@pytest.fixture(scope="session")
def exported_sliding(tmp_path_factory):
    """name -> path of a tiny sliding-window decoder export (see SLIDING)."""
    root = tmp_path_factory.mktemp("exports_sliding")
    return {name: _export(_build_sliding(kind), root / f"{name}.onnx", 18) for name, (kind, _) in SLIDING.items()}


@pytest.fixture(scope="session")
def exported_bias(tmp_path_factory):
    """A tiny T5 encoder (2 cores whose additive mask carries the relative-position bias)."""
    return _export(_build("t5_encoder"), tmp_path_factory.mktemp("exports_bias") / "t5_encoder.onnx", 18)


@pytest.fixture(scope="session")
def exported_past(tmp_path_factory):
    """Tiny LLaMA (GQA 4/2) decoding S new tokens after a past of P cached keys/values per layer (inputs
    input_ids [B,S], attention_mask [B,P+S], k0 v0 k1 v1 [B,2,P,16]): the past Concat sits before the core."""
    import torch
    from transformers import DynamicCache

    class WithPast(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, k0, v0, k1, v1):
            cache = DynamicCache()
            cache.update(k0, v0, 0)
            cache.update(k1, v1, 1)
            past = k0.shape[2]
            pos = torch.arange(past, past + input_ids.shape[1]).unsqueeze(0)
            return self.m(
                input_ids=input_ids,
                attention_mask=attention_mask,
                past_key_values=cache,
                position_ids=pos,
                use_cache=True,
            ).last_hidden_state

    torch.manual_seed(0)
    ids, mask = torch.randint(0, 100, (2, 6)), torch.ones(2, 16, dtype=torch.long)
    kv = [torch.randn(2, 2, 10, 16) for _ in range(4)]
    path = tmp_path_factory.mktemp("exports_past") / "llama_past.onnx"
    dyn = torch.export.Dim.DYNAMIC
    names = ["k0", "v0", "k1", "v1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            WithPast(_build("llama").eval()),
            (ids, mask, *kv),
            str(path),
            input_names=["input_ids", "attention_mask", *names],
            output_names=["last_hidden_state"],
            dynamo=True,
            opset_version=18,
            optimize=False,
            dynamic_shapes={
                "input_ids": {0: dyn, 1: dyn},
                "attention_mask": {0: dyn, 1: dyn},
                **{n: {0: dyn, 2: dyn} for n in names},
            },
        )
    return path


@pytest.fixture(scope="session")
def exported_optimum(tmp_path_factory):
    """Tiny LLaMA (GQA 4/2) exported by optimum (`text-generation-with-past`: TorchScript exporter, SDPA
    decomposed, past_key_values inputs and present outputs), from a save_pretrained folder, offline."""
    import os

    import torch
    from optimum.exporters.onnx import main_export
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    root = tmp_path_factory.mktemp("exports_optimum")
    LlamaForCausalLM(cfg).eval().save_pretrained(root / "hf")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(str(root / "hf"), output=str(root / "onnx"), task="text-generation-with-past")
    return root / "onnx" / "model.onnx"


@pytest.fixture(scope="session")
def exported_optimum_runtime_scale(tmp_path_factory):
    """optimum exports whose SDPA scale is computed at run time from Shape(Q)[-1] (applied to Q and K^T): BERT
    (feature-extraction, opset 17) and GPT-2 with past (text-generation-with-past, opset 18). name -> path."""
    import os

    import torch
    from optimum.exporters.onnx import main_export
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("exports_optimum_scale")
    BertModel(
        BertConfig(
            vocab_size=100,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=512,
        )
    ).eval().save_pretrained(root / "bert")
    GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=512)).eval().save_pretrained(
        root / "gpt2"
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(str(root / "bert"), output=str(root / "bert_onnx"), task="feature-extraction", opset=17)
        main_export(str(root / "gpt2"), output=str(root / "gpt2_onnx"), task="text-generation-with-past")
    return {"bert17": root / "bert_onnx" / "model.onnx", "gpt2_past18": root / "gpt2_onnx" / "model.onnx"}


@pytest.fixture(scope="session")
def exported_t5(tmp_path_factory):
    """Tiny T5 encoder-decoder through both exporters: exporter name -> path."""
    root = tmp_path_factory.mktemp("exports_t5")
    return {
        "dynamo18": _export(_build("t5"), root / "t5_dynamo.onnx", 18),
        "torchscript17": _export(_build("t5"), root / "t5_ts.onnx", 17, "torchscript"),
    }


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """name -> (path of the export, attention cores it holds)."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, (kind, opset, cores, *exporter) in MODELS.items():
        out[name] = (_export(_build(kind), root / f"{name}.onnx", opset, *exporter), cores)
    return out
