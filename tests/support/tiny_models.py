"""Tiny random-weight Hugging Face models (torch 2.13 CPU + transformers) and their exports: the builders shared by
the rewriter's fixtures (tests/rewriter/conftest.py) and its coverage corpus (corpus.py)."""

import warnings
from pathlib import Path


def export(model, path: Path, opset: int, exporter: str = "dynamo") -> Path:
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
        names = dict(input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"])
        if exporter == "torchscript":
            axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
            dynamic = dict(dynamo=False, dynamic_axes=axes)
        else:
            shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
            dynamic = dict(dynamo=True, optimize=False, dynamic_shapes=shapes)
        torch.onnx.export(Wrapper(model.eval()), (ids, mask), str(path), opset_version=opset, **names, **dynamic)
    return path


# Every tiny model: 2 layers, 4 heads of size 16; the LLaMA family with GQA 4/2.
BERT = dict(
    vocab_size=100,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=512,
)
DECODER = dict(BERT, num_key_value_heads=2)


def build(kind: str):
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
        cfg = LlamaConfig(**DECODER)
        return LlamaModel._from_config(cfg, attn_implementation="sdpa" if kind == "llama_sdpa" else "eager")
    if kind == "qwen3":  # per-head RMSNorm of Q and K before the rotary
        from transformers import Qwen3Config, Qwen3Model

        cfg = Qwen3Config(**DECODER, head_dim=16)
        return Qwen3Model._from_config(cfg, attn_implementation="eager")
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=512)
        return GPT2Model._from_config(cfg, attn_implementation="eager")
    return BertModel._from_config(BertConfig(**BERT), attn_implementation="eager")


def build_sliding(kind: str):
    import torch
    from transformers import Gemma3TextConfig, Gemma3TextModel, MistralConfig, MistralModel, Qwen2Config, Qwen2Model

    torch.manual_seed(0)
    common = dict(DECODER, sliding_window=3)
    if kind == "mistral":
        return MistralModel._from_config(MistralConfig(**common), attn_implementation="eager")
    if kind == "qwen2_window":
        return Qwen2Model._from_config(
            Qwen2Config(**common, use_sliding_window=True, max_window_layers=1), attn_implementation="eager"
        )
    cfg = Gemma3TextConfig(**common, head_dim=16, layer_types=["sliding_attention", "full_attention"])
    return Gemma3TextModel._from_config(cfg, attn_implementation="eager")


# The head classes optimum exports (its tasks need an LM / seq2seq head), by the kind names of build / build_sliding.
HEADS = {
    "bert": "BertModel",
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen2_window": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "bart": "BartForConditionalGeneration",
    "t5": "T5ForConditionalGeneration",
}


def build_any(kind: str):
    """The tiny base model of any kind (build or build_sliding), seeded."""
    return build_sliding(kind) if kind in ("mistral", "qwen2_window", "gemma3") else build(kind)


def save_with_head(kind: str, folder: Path) -> Path:
    """The tiny model of `kind` with the head optimum's tasks need, saved as a transformers folder (seeded)."""
    import torch
    import transformers

    config = build_any(kind).config
    torch.manual_seed(0)
    model = getattr(transformers, HEADS[kind])._from_config(config, attn_implementation="eager")
    model.eval().save_pretrained(folder)
    return folder


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


# Sliding-window decoders (window 3, GQA 4/2), dynamo at opset 18: name -> (factory, window per core in graph order).
SLIDING = {
    "mistral": ("mistral", [3, 3]),  # every layer windowed
    "qwen2_window": ("qwen2_window", [-1, 3]),  # layers from max_window_layers = 1 on
    "gemma3": ("gemma3", [3, -1]),  # sliding, then global
}
