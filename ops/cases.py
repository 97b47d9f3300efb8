"""One description of an attention case, used by the tests and the benchmarks alike."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=2)
def _capture(path: str) -> dict[str, np.ndarray]:
    d = np.load(path)
    return {k: d[k] for k in d.files}


@dataclass(frozen=True)
class AttentionCase:
    B: int = 1
    Hq: int = 4
    Hkv: int = 4
    S: int = 64
    T: int = 64
    D: int = 64
    Dv: int | None = None
    is_causal: int = 0
    attn_mask: str | None = None  # None | "bool" | "float" (pure 0/-inf mask) | "bias" (arbitrary float)
    mask_shape: str = "B1ST"  # which axes the mask has: subset of "BHST" letters, "1" = broadcast
    key_padding_mask: str | None = None  # None | "bool" | "int64" | "int32"
    scale: float | None = None
    seed: int = 0
    peak: float = 1.0  # logit temperature of the generated data (> 1: more peaked attention)
    clusters: int = 0  # > 0: keys and queries drawn around this many shared centres (peaked, like real attention)
    capture: str | None = None  # an ice-capture-qk file: Q, K, V are its first S / T tokens of layer `layer`
    layer: int = 0  # index into the capture's layers
    attrs: dict = field(default_factory=dict)

    @classmethod
    def from_capture(cls, path: str, layer: int, n: int, **kw) -> AttentionCase:
        """Real activations: the first n tokens of capture layer index `layer` (all its query and KV heads)."""
        d = _capture(path)
        _, hq, t, dim = d["Q"].shape
        if n > t:
            raise ValueError(f"{path} holds {t} tokens; asked for {n}")
        if not 0 <= layer < d["Q"].shape[0]:
            raise ValueError(f"{path} holds {d['Q'].shape[0]} layers; asked for index {layer}")
        return cls(B=1, Hq=hq, Hkv=d["K"].shape[1], S=n, T=n, D=dim, capture=path, layer=layer, **kw)

    @property
    def dv(self) -> int:
        return self.Dv if self.Dv is not None else self.D

    @property
    def capture_layer(self) -> int:
        """The model layer number of `layer` in the capture."""
        return int(_capture(self.capture)["layers"][self.layer])

    def with_(self, **kw) -> AttentionCase:
        return replace(self, **kw)

    def label(self) -> str:
        parts = [f"B{self.B}", f"H{self.Hq}/{self.Hkv}", f"S{self.S}", f"T{self.T}", f"D{self.D}"]
        if self.capture is not None:
            parts.append(f"capture-layer{self.layer}")
        if self.Dv is not None:
            parts.append(f"Dv{self.Dv}")
        if self.is_causal:
            parts.append("causal")
        if self.attn_mask:
            parts.append(f"mask-{self.attn_mask}-{self.mask_shape}")
        if self.key_padding_mask:
            parts.append(f"kpm-{self.key_padding_mask}")
        if self.scale is not None:
            parts.append(f"scale{self.scale:g}")
        return "_".join(parts)

    def inputs(self) -> dict[str, np.ndarray]:
        """Seeded float32 inputs (and masks) named as the KnnAttention inputs."""
        rng = np.random.default_rng(self.seed)
        f = np.float32
        if self.capture is not None:
            d = _capture(self.capture)
            return {
                n: np.ascontiguousarray(d[n][self.layer][None, :, : (self.S if n == "Q" else self.T)], dtype=f)
                for n in ("Q", "K", "V")
            }
        q = rng.standard_normal((self.B, self.Hq, self.S, self.D)).astype(f) * f(self.peak)
        k = rng.standard_normal((self.B, self.Hkv, self.T, self.D)).astype(f)
        if self.clusters:
            centres = rng.standard_normal((self.clusters, self.D)).astype(f) * f(1.5)
            q += centres[rng.integers(0, self.clusters, q.shape[:3])] * f(self.peak)
            k += centres[rng.integers(0, self.clusters, k.shape[:3])]
        v = rng.standard_normal((self.B, self.Hkv, self.T, self.dv)).astype(f)
        out = {"Q": q, "K": k, "V": v}
        if self.attn_mask:
            shape = tuple(
                {"B": self.B, "H": self.Hq, "S": self.S, "T": self.T}[c] if c != "1" else 1 for c in self.mask_shape
            )
            keep = rng.random(shape) > 0.25
            if self.attn_mask == "bool":
                out["attn_mask"] = keep
            elif self.attn_mask == "float":
                out["attn_mask"] = np.where(keep, 0.0, -np.inf).astype(f)
            elif self.attn_mask == "bias":
                out["attn_mask"] = rng.standard_normal(shape).astype(f)
            else:
                raise ValueError(f"unknown attn_mask kind {self.attn_mask!r}")
        if self.key_padding_mask:
            lengths = rng.integers(max(1, self.T // 2), self.T + 1, size=self.B) if self.T else np.zeros(self.B, int)
            real = np.arange(self.T)[None, :] < lengths[:, None]
            dtype = {"bool": bool, "int64": np.int64, "int32": np.int32}[self.key_padding_mask]
            out["key_padding_mask"] = real.astype(dtype)
        return out

    def op_attrs(self) -> dict:
        a = {"is_causal": self.is_causal, **self.attrs}
        if self.scale is not None:
            a["scale"] = float(self.scale)
        return a
