import numpy as np
import onnxruntime as ort
import pytest

from iceformer.ops import make_knn_attention_model, session_options


def mask_dtype(case):
    if case.attn_mask is None:
        return None
    return "bool" if case.attn_mask == "bool" else "float"


def knn_session(case=None, threads: int = 2, **model_kw):
    """A session over one KnnAttention node built for `case` (or from model_kw alone)."""
    if case is not None:
        model_kw = {"attn_mask": mask_dtype(case), "key_padding_mask": case.key_padding_mask, **case.op_attrs(), **model_kw}
    model = make_knn_attention_model(**model_kw)
    return ort.InferenceSession(model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])


def run_case(case, threads: int = 2, **model_kw) -> np.ndarray:
    return knn_session(case, threads, **model_kw).run(None, case.inputs())[0]


@pytest.fixture
def tmp_stats(tmp_path, monkeypatch):
    path = tmp_path / "stats.jsonl"
    monkeypatch.setenv("ICEFORMER_STATS", str(path))
    return path
