"""Shared by the genai-form tests: the exported graph against the transformers model it was written from."""

import numpy as np
import onnxruntime as ort
import torch


def assert_last_logits_match(folder, model, *, vocab: int, atol: float, tokens: int = 100) -> None:
    """Last-position logits of `tokens` random ids (below `vocab`), empty past, equal to transformers' within atol."""
    cfg = model.config
    ids = np.random.default_rng(0).integers(0, vocab, (1, tokens))
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "attention_mask": np.ones((1, tokens), np.int64)}
    empty = np.zeros((1, cfg.num_key_value_heads, 0, cfg.hidden_size // cfg.num_attention_heads), np.float32)
    feeds.update({i.name: empty for i in sess.get_inputs() if i.name.startswith("past")})
    got = sess.run(["logits"], feeds)[0][0, -1]
    with torch.no_grad():
        want = model(torch.tensor(ids)).logits[0, -1].numpy()
    np.testing.assert_allclose(got, want, atol=atol, rtol=1e-4)
