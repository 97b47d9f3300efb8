"""Tiny random-weight Hugging Face models exported at test time (torch 2.13 CPU + transformers), once per session."""

import warnings

import pytest

from tests.support.tiny_models import BERT, DECODER, MODELS, SLIDING, build, build_sliding, export


@pytest.hookimpl(tryfirst=True)  # before the tier selection of tests/conftest.py
def pytest_collection_modifyitems(items):
    """A test that uses one of the export fixtures below belongs to the full tier (marker `exports`)."""
    for item in items:
        if any(name.startswith("exported") for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.exports)


@pytest.fixture(scope="session")
def exported_sliding(tmp_path_factory):
    """name -> path of a tiny sliding-window decoder export (see SLIDING)."""
    root = tmp_path_factory.mktemp("exports_sliding")
    return {name: export(build_sliding(kind), root / f"{name}.onnx", 18) for name, (kind, _) in SLIDING.items()}


@pytest.fixture(scope="session")
def exported_bias(tmp_path_factory):
    """A tiny T5 encoder (2 cores whose additive mask carries the relative-position bias)."""
    return export(build("t5_encoder"), tmp_path_factory.mktemp("exports_bias") / "t5_encoder.onnx", 18)


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
            WithPast(build("llama").eval()),
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
    cfg = LlamaConfig(**DECODER)
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
    BertModel(BertConfig(**BERT)).eval().save_pretrained(root / "bert")
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
        "dynamo18": export(build("t5"), root / "t5_dynamo.onnx", 18),
        "torchscript17": export(build("t5"), root / "t5_ts.onnx", 17, "torchscript"),
    }


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """name -> (path of the export, attention cores it holds)."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, (kind, opset, cores, *exporter) in MODELS.items():
        out[name] = (export(build(kind), root / f"{name}.onnx", opset, *exporter), cores)
    return out
