"""Canonical attention core that every exporter form is first rewritten into, then lowered once.

`iceformer.canonical::Sdpa(Q, K, V, cond?, mask?)`: softmax(scale * Q K^T, masked where `cond` is false, plus
`mask`) V, with Q [B,Hq,S,D], K [B,Hk,T,D] (Hk = Hq after HF's head repetition), V [B,Hk,T,Dv]. Attribute
`scale` (float). `cond` is a boolean tensor (true = attend) and `mask` an additive float tensor, both
broadcastable to [B,Hq,S,T]; either may be absent (an empty input name). Its metadata carries LAYER_TAG.
"""

DOMAIN = "iceformer.canonical"
OP = "Sdpa"
LAYER_TAG = "iceformer.layer"  # metadata: the core's index among the cores found, in graph order (--layers)
