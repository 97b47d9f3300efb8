"""Sessions over one KnnAttention node built from an AttentionCase, and the bfloat16 P V error bound the k-NN path's
outputs are checked against."""

import numpy as np
import onnxruntime as ort
from iceformer.ops import make_knn_attention_model, session_options


def mask_dtype(case):
    if case.attn_mask is None:
        return None
    return "bool" if case.attn_mask == "bool" else "float"


def knn_session(case=None, threads: int = 2, **model_kw):
    """A session over one KnnAttention node built for `case` (or from model_kw alone)."""
    if case is not None:
        model_kw = {
            "attn_mask": mask_dtype(case),
            "key_padding_mask": case.key_padding_mask,
            **case.op_attrs(),
            **model_kw,
        }
    model = make_knn_attention_model(**model_kw)
    return ort.InferenceSession(model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])


def run_case(case, threads: int = 2, **model_kw) -> np.ndarray:
    return knn_session(case, threads, **model_kw).run(None, case.inputs())[0]


# The k-NN path's P V on the tier with bfloat16 P V (avx512-vnni-bf16; the others run it in fp32) rounds weights and
# values to 8 significant bits (relative error <= 2^-8 each; ops/csrc/simd.h): an output is then within 2^-7 of the
# weighted mean of |v| (the softmax of the same logits applied to |V|) of the float64 answer, on every tier.
BF16_PV_REL = 2.0**-7


def assert_close_bf16_pv(got, ref, ref_abs_v, atol=2e-5):
    """got within BF16_PV_REL * ref_abs_v + atol of ref, elementwise (ref_abs_v: the reference applied to |V|)."""
    got, ref, ref_abs_v = (np.asarray(a, np.float64) for a in (got, ref, ref_abs_v))
    excess = np.abs(got - ref) - (BF16_PV_REL * ref_abs_v + atol)
    assert not (excess > 0).any(), (
        f"{int((excess > 0).sum())} of {excess.size} outputs beyond the bfloat16 P V bound (worst by {excess.max():.3g})"
    )
