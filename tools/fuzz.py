"""ice-fuzz: seeded random calls of every op in the library; each must give the reference's output (exact
settings), a bounded output (k-NN settings) or a clean ONNX Runtime error - never a crash, a hang or garbage.

Cases are drawn from (seed, index), so any case can be replayed alone. They run in a child process: a crash or a
hang (--timeout) kills only the child, the case is recorded as a failure and the run goes on from the next case.
A failure is shrunk (dimensions halved or set to 1, extras dropped, while it still fails) and written as JSON to
--out; tests/ops/fuzz_regressions/ holds the ones found so far, replayed by the tests.

  ice-fuzz --calls 10000 [--seed 0] [--ops knn gqa] [--timeout 60] [--out fuzz-failures]

What a case draws (KnnAttention): B, Hq, Hkv (Hq a multiple of Hkv, or not: invalid), S, T, D, Dv including 0, 1
and odd sizes; K/V heads or dims that disagree with Q (invalid); an attn_mask of rank 1-4, bool or float, with
all-masked rows, -inf / float-min / NaN fills; a key_padding_mask of bool/int32/int64, possibly the wrong shape;
NaN/inf in Q/K/V; causal or not; a hard window; every k-NN attribute within and beyond its range; 1, 2 or 4
threads. GroupQueryAttention: prefill, chunked prefill and decode shapes, packed or separate QKV, rotary, window,
softcap, batches of different lengths, against ORT's com.microsoft.GroupQueryAttention on valid cases (ORT's
kernel is not fed invalid input: it is not ours to harden).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# |ours - float64 reference| <= (EXACT_ATOL + float32 rounding of the logits) * max(1, |V|) + EXACT_RTOL |reference|
EXACT_ATOL, EXACT_RTOL = 2e-5, 1e-4
OPS = ("knn", "gqa")


@dataclass
class Case:
    op: str
    seed: int
    index: int
    dims: dict
    attrs: dict
    extras: dict = field(default_factory=dict)  # masks, special values, thread count
    valid: bool = True  # by construction: the contract accepts these inputs


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _dim(rng, small=(0, 1, 2, 3), big=(5, 17, 31, 64, 65, 100, 129, 300)) -> int:
    return int(_pick(rng, small)) if rng.random() < 0.25 else int(_pick(rng, big))


def draw(op: str, seed: int, index: int) -> Case:
    """Case `index` of the run seeded `seed` (the same on every machine)."""
    rng = np.random.default_rng([seed, index, OPS.index(op)])
    return _draw_knn(rng, seed, index) if op == "knn" else _draw_gqa(rng, seed, index)


def _draw_knn(rng, seed: int, index: int) -> Case:
    from ..ops import contract

    Hkv = int(_pick(rng, (1, 1, 2, 3)))
    Hq = Hkv * int(_pick(rng, (1, 2, 3)))
    dims = {
        "B": int(_pick(rng, (1, 1, 2, 3))),
        "Hq": Hq,
        "Hkv": Hkv,
        "S": _dim(rng),
        "T": _dim(rng),
        "D": int(_pick(rng, (1, 3, 8, 16, 33, 64, 80))),
        "Dv": 0,
    }
    dims["Dv"] = dims["D"] if rng.random() < 0.7 else int(_pick(rng, (1, 5, 32, 64)))
    valid = True
    if rng.random() < 0.06:  # heads that do not divide
        dims["Hq"] = Hkv * 2 + 1 if Hkv > 1 else dims["Hq"]
        valid = dims["Hq"] % Hkv == 0
    extras: dict = {"threads": int(_pick(rng, (1, 2, 4))), "bad": None}
    if rng.random() < 0.06:
        extras["bad"] = _pick(rng, ["k_dim", "v_heads", "v_len", "q_rank"])
        valid = False
    attrs: dict = {"is_causal": int(rng.random() < 0.5)}
    if rng.random() < 0.2:
        attrs["local_window_size"] = int(_pick(rng, (1, 2, 7, 64, 500)))
    if rng.random() < 0.2:
        attrs["scale"] = float(_pick(rng, (0.01, 0.3, 1.0, 4.0)))
    knn = rng.random() < 0.6
    if knn:  # the k-NN path on these small shapes: engage it from few keys
        attrs["min_keys"] = int(_pick(rng, (0, 1, 16, 64)))
        attrs["decode_min_keys"] = attrs["min_keys"]  # decode steps too
        for spec in contract.KNN_ATTRIBUTES:
            if spec.name in ("min_keys", "decode_min_keys") or rng.random() < 0.6:
                continue
            attrs[spec.name] = _knn_value(rng, spec.name, dims["Hq"])
    if rng.random() < 0.05:  # out of range: the op must refuse it (at session creation or at the call)
        name, value = _pick(
            rng,
            [
                ("top_k", -1),
                ("rank", 0),
                ("L", 0),
                ("m", -3),
                ("tail_limit", 1.5),
                ("candidate_fraction", -0.5),
                ("search", 7),
                ("is_causal", 2),
                ("local_window_size", 0),
                ("tail_samples", -1),
                ("num_sink", -2),
                ("head_budgets", [4] * (dims["Hq"] + 1)),  # one per query head, or none
                ("head_tail_samples", [-1] * dims["Hq"]),
                ("head_windows", [2] * (dims["Hq"] + 2)),
            ],
        )
        attrs[name] = value
        valid = False
    mask = None
    if rng.random() < 0.35:
        rank = int(_pick(rng, (1, 2, 3, 4)))
        mask = {
            "rank": rank,
            "dtype": _pick(rng, ["bool", "float"]),
            "fill": _pick(rng, ["-inf", "float-min", "-1e4", "nan", "random"]),
            "all_masked_rows": bool(rng.random() < 0.3),
        }
    extras["attn_mask"] = mask
    extras["key_padding_mask"] = None
    if rng.random() < 0.3:
        extras["key_padding_mask"] = {
            "dtype": _pick(rng, ["bool", "int32", "int64"]),
            "wrong_shape": bool(rng.random() < 0.1),
        }
        valid = valid and not extras["key_padding_mask"]["wrong_shape"]
    extras["special"] = _pick(rng, [None, None, None, "nan_q", "inf_k", "huge_v"])
    return Case("knn", seed, index, dims, attrs, extras, valid)


def _knn_value(rng, name: str, Hq: int):
    per_head = {"head_budgets": (0, 1, 4, 32, 128), "head_tail_samples": (0, 1, 64), "head_windows": (0, 0, 1, 16, 300)}
    if name in per_head:
        return [int(_pick(rng, per_head[name])) for _ in range(Hq)]
    ranges = {
        "top_k": (0, 1, 4, 32, 128, 1000),
        "search": (0, 1),
        "rank": (1, 8, 32, 64),
        "L": (1, 4, 8),
        "m": (1, 2, 5),
        "max_candidates": (0, 1, 16, 256),
        "candidate_fraction": (0.0, 0.1, 1.0),
        "local_window": (0, 1, 64, 1000),
        "num_sink": (0, 1, 4, 50),
        "tail_samples": (0, 1, 64, 256),
        "tail_limit": (0.0, 0.3, 1.0),
        "seed": (0, 7),
        "auto_window": (0, 1, 16, 300, 2048),
        "auto_window_error": (0.0, 0.01, 1.0),
    }
    return _pick(rng, ranges[name])


def _draw_gqa(rng, seed: int, index: int) -> Case:
    Hkv = int(_pick(rng, (1, 2)))
    Hq = Hkv * int(_pick(rng, (1, 3, 4)))
    B = int(_pick(rng, (1, 1, 2)))
    mode = _pick(rng, ["prefill", "chunk", "decode"])
    S = 1 if mode == "decode" else _dim(rng, small=(1, 2, 31), big=(32, 40, 70, 129, 300))
    P = 0 if mode == "prefill" else int(_pick(rng, (1, 17, 200, 600)))
    dims = {"B": B, "Hq": Hq, "Hkv": Hkv, "S": S, "P": P, "D": int(_pick(rng, (16, 32, 64)))}
    attrs: dict = {}
    if rng.random() < 0.2:
        attrs["local_window_size"] = int(_pick(rng, (1, 8, 64)))
    if rng.random() < 0.15:
        attrs["softcap"] = float(_pick(rng, (1.0, 30.0)))
    if rng.random() < 0.5:
        attrs["min_keys"] = int(_pick(rng, (0, 32)))
        attrs["decode_min_keys"] = attrs["min_keys"]
        attrs["top_k"] = int(_pick(rng, (4, 32, 128)))
        if rng.random() < 0.3:
            attrs["head_budgets"] = [int(_pick(rng, (0, 4, 32))) for _ in range(Hq)]
        if rng.random() < 0.2:
            attrs["head_windows"] = [int(_pick(rng, (0, 1, 16))) for _ in range(Hq)]
    extras = {
        "threads": int(_pick(rng, (1, 2, 4))),
        "packed": bool(rng.random() < 0.5),
        "rotary": bool(rng.random() < 0.5),
        "short_rows": bool(B > 1 and mode == "prefill" and rng.random() < 0.5),
        "bad": _pick(rng, [None] * 14 + ["seqlens_long", "cache_short", "qkv_width"]),
    }
    return Case("gqa", seed, index, dims, attrs, extras, extras["bad"] is None)


def _inputs_knn(case: Case) -> tuple[dict, dict]:
    """(feeds, model keyword arguments) of a KnnAttention case."""
    rng = np.random.default_rng([case.seed, case.index, 99])
    d, x = case.dims, case.extras
    f = np.float32
    q_shape = (d["B"], d["Hq"], d["S"], d["D"])
    k_shape = (d["B"], d["Hkv"], d["T"], d["D"] + (1 if x["bad"] == "k_dim" else 0))
    v_shape = (
        d["B"],
        d["Hkv"] + (1 if x["bad"] == "v_heads" else 0),
        d["T"] + (1 if x["bad"] == "v_len" else 0),
        d["Dv"],
    )
    feeds = {
        "Q": rng.standard_normal(q_shape).astype(f),
        "K": rng.standard_normal(k_shape).astype(f),
        "V": rng.standard_normal(v_shape).astype(f),
    }
    if x["bad"] == "q_rank":
        feeds["Q"] = feeds["Q"].reshape(q_shape[0], -1) if feeds["Q"].size else feeds["Q"].reshape(q_shape[0], 0)
    if x["special"] == "nan_q" and feeds["Q"].size:
        feeds["Q"].flat[int(rng.integers(feeds["Q"].size))] = np.nan
    elif x["special"] == "inf_k" and feeds["K"].size:
        feeds["K"].flat[int(rng.integers(feeds["K"].size))] = np.inf
    elif x["special"] == "huge_v":
        feeds["V"] *= f(1e30)
    kw: dict = dict(case.attrs)
    m = x.get("attn_mask")
    if m is not None:
        full = (d["B"], d["Hq"], d["S"], d["T"])
        shape = tuple(s if rng.random() < 0.6 else 1 for s in full[4 - m["rank"] :])
        keep = rng.random(shape) < 0.7
        if m["all_masked_rows"] and len(shape) >= 2 and shape[-2] > 0:
            keep[..., 0, :] = False
        if m["dtype"] == "bool":
            feeds["attn_mask"] = keep
        else:
            fill = {"-inf": -np.inf, "float-min": np.finfo(f).min, "-1e4": -1e4, "nan": np.nan}.get(m["fill"])
            vals = rng.standard_normal(shape).astype(f)
            feeds["attn_mask"] = np.where(keep, vals, f(fill) if fill is not None else vals).astype(f)
        kw["attn_mask"] = m["dtype"]
        kw["attn_mask_rank"] = m["rank"]
    p = x.get("key_padding_mask")
    if p is not None:
        T = d["T"] + (1 if p["wrong_shape"] else 0)
        keep = rng.random((d["B"], T)) < 0.8
        feeds["key_padding_mask"] = keep.astype({"bool": bool, "int32": np.int32, "int64": np.int64}[p["dtype"]])
        kw["key_padding_mask"] = p["dtype"]
    return feeds, kw


def _check_knn(case: Case, sess_out: np.ndarray, feeds: dict) -> str | None:
    """None when the output is right for the case's settings, else what is wrong."""
    from ..ops import contract, knn_attention_reference

    ref_kw = {k: v for k, v in case.attrs.items() if k in ("is_causal", "scale", "local_window_size")}
    with np.errstate(all="ignore"):
        want = knn_attention_reference(
            feeds["Q"], feeds["K"], feeds["V"], feeds.get("attn_mask"), feeds.get("key_padding_mask"), **ref_kw
        )
    if sess_out.shape != want.shape:
        return f"output shape {sess_out.shape}, expected {want.shape}"
    rows = np.isfinite(want).all(-1)  # rows whose reference is defined (no NaN/inf reaching them)
    threshold = "decode_min_keys" if case.dims["S"] < 32 else "min_keys"  # S < 32: the decode path
    exact = case.attrs.get(threshold, contract.attribute(threshold).default) > case.dims["T"]
    exact = exact or case.attrs.get("top_k", contract.attribute("top_k").default) == 0
    got, ref = sess_out[rows], want[rows]
    if not np.isfinite(got).all():
        return "a non-finite output where the reference is finite"
    if exact and got.size:
        # float32 rounding: logits of magnitude M lose ~6e-8 M each, so weights and outputs move by that x max |V|
        from ..ops.reference import logits

        with np.errstate(all="ignore"):
            z = logits(feeds["Q"], feeds["K"], scale=case.attrs.get("scale"), attn_mask=feeds.get("attn_mask"))
        zmax = float(np.max(np.abs(z[np.isfinite(z)]), initial=0.0))
        vmax = max(1.0, float(np.abs(feeds["V"]).max(initial=0.0)))
        bound = (EXACT_ATOL + 2.4e-7 * zmax) * vmax + EXACT_RTOL * np.abs(ref)
        if np.any(np.abs(got - ref) > bound):
            worst = float((np.abs(got - ref) / bound).max())
            return (
                f"exact settings: error {worst:.3g}x the float32 bound (|logit| up to {zmax:.3g}, |V| up to {vmax:.3g})"
            )
    else:  # a convex combination of visible values: bounded by the values' range (+ float slack, and the shared
        # key sets' bfloat16 P V: weights and values each rounded by <= 2^-8 relative)
        bound = np.abs(feeds["V"]).max() * (1 + 2.0**-7) * 1.001 + 1e-5 if feeds["V"].size else 0.0
        if got.size and np.abs(got).max() > bound:
            return f"k-NN settings: |output| {np.abs(got).max():.3g} exceeds max |V| {bound:.3g}"
    return None


def _inputs_gqa(case: Case) -> dict:
    rng = np.random.default_rng([case.seed, case.index, 98])
    d, x = case.dims, case.extras
    B, S, P, Hq, Hkv, D = d["B"], d["S"], d["P"], d["Hq"], d["Hkv"], d["D"]
    f = np.float32
    lens = [P + S] * B
    if x["short_rows"]:
        lens = [P + S] + [int(rng.integers(1, P + S + 1)) for _ in range(B - 1)]
    feeds = {}
    width = (Hq + 2 * Hkv) * D if x["packed"] else Hq * D
    feeds["query"] = rng.standard_normal((B, S, width + (D if x["bad"] == "qkv_width" else 0))).astype(f)
    if not x["packed"]:
        feeds["key"] = rng.standard_normal((B, S, Hkv * D)).astype(f)
        feeds["value"] = rng.standard_normal((B, S, Hkv * D)).astype(f)
    past_rows = P // 2 if x["bad"] == "cache_short" else P  # shorter than the lengths say
    feeds["past_key"] = rng.standard_normal((B, Hkv, past_rows, D)).astype(f)
    feeds["past_value"] = feeds["past_key"].copy()
    if x["bad"] == "seqlens_long":
        lens = [n + 1000 for n in lens]
    feeds["seqlens_k"] = np.asarray(lens, np.int32) - 1
    feeds["total_sequence_length"] = np.array([max(lens)], np.int32)
    if x["rotary"]:
        angles = rng.random((P + S + 8, D // 2)).astype(f) * 3
        feeds["cos_cache"], feeds["sin_cache"] = np.cos(angles), np.sin(angles)
    return feeds


def run_case(case: Case) -> str | None:
    """Runs one case in this process: None when it behaves, else the failure. Crashes are the caller's to see."""
    import onnxruntime as ort

    from ..ops import make_gqa_model, make_knn_attention_model, session_options

    so = session_options(case.extras["threads"])
    if case.op == "knn":
        feeds, kw = _inputs_knn(case)
        model = make_knn_attention_model(unknown_shapes=True, **kw)
    else:
        feeds = _inputs_gqa(case)
        model = make_gqa_model(
            num_heads=case.dims["Hq"],
            kv_num_heads=case.dims["Hkv"],
            packed=case.extras["packed"],
            rotary=case.extras["rotary"],
            **case.attrs,
        )
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        out = sess.run(None, feeds)
    except (
        ort.capi.onnxruntime_pybind11_state.Fail,
        ort.capi.onnxruntime_pybind11_state.InvalidArgument,
        ort.capi.onnxruntime_pybind11_state.RuntimeException,
        ort.capi.onnxruntime_pybind11_state.InvalidGraph,
    ) as e:
        if case.valid:
            return f"a valid case raised {type(e).__name__}: {str(e)[:300]}"
        if not str(e).strip():
            return "an error without a message"
        return None
    if not case.valid:
        return None  # accepted what the draw thought invalid: the checks below do not apply, nothing to compare
    if case.op == "knn":
        return _check_knn(case, out[0], feeds)
    return _check_gqa(case, model, feeds, out)


def _check_gqa(case: Case, model, feeds: dict, out: list) -> str | None:
    import onnxruntime as ort

    from ..ops import contract, make_gqa_model

    theirs = make_gqa_model(
        domain="com.microsoft",
        num_heads=case.dims["Hq"],
        kv_num_heads=case.dims["Hkv"],
        packed=case.extras["packed"],
        rotary=case.extras["rotary"],
        **{k: v for k, v in case.attrs.items() if k not in [a.name for a in contract.KNN_ATTRIBUTES]},
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    try:
        want = ort.InferenceSession(theirs.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    except Exception:  # ORT's kernel refuses some valid calls (chunked prefill with batch > 1): nothing to compare
        return None if all(np.isfinite(o).all() for o in out) else "a non-finite output (ORT refused the case)"
    T = case.dims["P"] + case.dims["S"]
    # Decode steps (S < 32) are exact unless k-NN decode engages: on these small caches only a KV head's group of
    # streaming heads does (any retrieving group's tail sample covers most of the cache, so it declines).
    g, windows = case.dims["Hq"] // case.dims["Hkv"], case.attrs.get("head_windows") or []
    streams = any(all(w > 0 for w in windows[i : i + g]) for i in range(0, len(windows), g))
    decode_knn = (
        streams
        and case.attrs.get("top_k", contract.attribute("top_k").default) > 0
        and case.attrs.get("decode_min_keys", contract.attribute("decode_min_keys").default) <= T
    )
    exact = case.attrs.get("min_keys", contract.attribute("min_keys").default) > T
    exact = exact or (case.dims["S"] < 32 and not decode_knn)
    lens = feeds["seqlens_k"] + 1
    for name, g, w in zip(("output", "present_key", "present_value"), out, want):
        if g.shape != w.shape:
            return f"{name} shape {g.shape}, ORT's {w.shape}"
        if name != "output":
            for b, n in enumerate(lens):  # rows past a batch row's length are unspecified
                if not np.allclose(g[b, :, :n], w[b, :, :n], atol=1e-5, rtol=1e-4):
                    return f"{name} differs from ORT's in batch row {b}"
        elif exact:
            S = case.dims["S"]
            for b, n in enumerate(lens):
                valid = max(0, min(S, n - case.dims["P"]))  # query rows of real tokens
                if not np.allclose(g[b, :valid], w[b, :valid], atol=2e-5, rtol=1e-4):
                    return f"output differs from ORT's in batch row {b} (exact settings)"
        elif not np.isfinite(g).all():
            return "a non-finite output (k-NN settings)"
    return None


def _child(op_seed_range: str) -> None:
    """Child process: runs cases and prints one JSON line per case, flushed before the next one starts."""
    op, seed, start, stop = op_seed_range.split(":")
    for i in range(int(start), int(stop)):
        print(json.dumps({"index": i, "start": True}), flush=True)
        try:
            failure = run_case(draw(op, int(seed), i))
        except Exception as e:  # a Python-side exception (not an ORT error) is a failure too
            failure = f"{type(e).__name__}: {e}"
        print(json.dumps({"index": i, "failure": failure}), flush=True)


def run_cases(op: str, seed: int, start: int, stop: int, timeout: float) -> dict[int, str]:
    """{case index: failure} over cases [start, stop), each isolated from the others' crashes and hangs."""
    failures: dict[int, str] = {}
    i = start
    while i < stop:
        proc = subprocess.Popen(
            [sys.executable, "-m", "iceformer.tools.fuzz", "--child", f"{op}:{seed}:{i}:{stop}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        current = None
        try:
            while True:
                line = _readline(proc, timeout)
                if line is None:  # hang
                    proc.kill()
                    failures[current if current is not None else i] = f"hang: no answer within {timeout} s"
                    break
                if not line:  # the child is gone
                    code = proc.wait()
                    if current is not None:
                        failures[current] = f"crash: the process died with code {code}"
                    break
                msg = json.loads(line)
                if msg.get("start"):
                    current = msg["index"]
                    continue
                if msg["failure"]:
                    failures[msg["index"]] = msg["failure"]
                current = None
                i = msg["index"] + 1
        finally:
            proc.kill()
            proc.wait()
        if current is not None:
            i = current + 1
        elif proc.returncode not in (0, -9) and i < stop:
            i += 1
    return failures


def _readline(proc, timeout: float) -> str | None:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    ready = sel.select(timeout)
    sel.close()
    return proc.stdout.readline() if ready else None


def shrink(case: Case, fails) -> Case:
    """A smaller case that still fails (`fails(case) -> bool`): dimensions halved or set to 1, extras dropped."""
    improved = True
    while improved:
        improved = False
        for key in list(case.dims):
            for smaller in (1, case.dims[key] // 2):
                if (
                    smaller >= case.dims[key]
                    or (key == "Hq" and smaller % max(case.dims.get("Hkv", 1), 1))
                    or (key == "Hkv" and case.dims["Hq"] % max(smaller, 1))
                ):
                    continue  # keeps the head grouping valid: shrinking must not change what fails
                trial = Case(**{**asdict(case), "dims": {**case.dims, key: smaller}})
                if fails(trial):
                    case, improved = trial, True
                    break
        for key in [k for k, v in case.extras.items() if v not in (None, False) and k != "threads"]:
            trial = Case(**{**asdict(case), "extras": {**case.extras, key: None}})
            if fails(trial):
                case, improved = trial, True
    return case


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="ice-fuzz", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--calls", type=int, default=10000, help="cases per op")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds one case may take before it counts as a hang")
    ap.add_argument("--out", type=Path, default=Path("fuzz-failures"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    from rich.console import Console

    console = Console()
    total = 0
    for op in args.ops:
        t0 = time.perf_counter()
        failures = run_cases(op, args.seed, 0, args.calls, args.timeout)
        console.print(f"{op}: {args.calls} cases in {time.perf_counter() - t0:.0f} s, {len(failures)} failures")
        for index, why in failures.items():
            case = draw(op, args.seed, index)
            kind = _kind(why)
            small = shrink(case, lambda c, kind=kind: _kind(_failure_isolated(c, args.timeout)) == kind)
            args.out.mkdir(parents=True, exist_ok=True)
            path = args.out / f"{op}-{args.seed}-{index}.json"
            path.write_text(json.dumps({"failure": why, "case": asdict(small)}, indent=1))
            console.print(f"  case {index}: {why}\n    shrunk to {small.dims} {small.attrs}: {path}", markup=False)
        total += len(failures)
    return 1 if total else 0


def _failure_isolated(case: Case, timeout: float) -> str | None:
    """How `case` fails, run in a child process ("crash ..." / "hang ..." included), or None."""
    code = (
        "import json,sys; from iceformer.tools.fuzz import Case, run_case; "
        "f = run_case(Case(**json.loads(sys.argv[1]))); print(json.dumps(f))"
    )
    try:
        res = subprocess.run(
            [sys.executable, "-c", code, json.dumps(asdict(case))], capture_output=True, timeout=timeout, text=True
        )
    except subprocess.TimeoutExpired:
        return f"hang: no answer within {timeout} s"
    if res.returncode != 0:
        return f"crash: the process died with code {res.returncode}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def _kind(failure: str | None) -> str | None:
    """What a failure is, without its numbers: shrinking keeps this fixed."""
    return None if failure is None else failure.split(":")[0].split(" (")[0]


if __name__ == "__main__":
    raise SystemExit(main())
