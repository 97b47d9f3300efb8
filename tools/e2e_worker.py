"""One runtime in its own process (ice-bench-e2e, ice-main), so that its peak memory is its own.

`Worker(python, kind, spec)` starts `PYTHON e2e_worker.py KIND SPEC_JSON`, which reads one JSON request per line on stdin
({"ids": [...], "new_tokens": k, "out": path}) and answers one JSON line on stdout. This file imports only numpy
and the runtime it drives, so it also runs in a peer's own environment (OpenVINO GenAI needs transformers 5).

Kinds:
- onnx: an ONNX decoder with last_hidden_state output (our eager export, rewritten or not); the hidden states go
  to request["out"] (.npy) for the caller's metrics; time = one session.run over the ids.
- genai: an onnxruntime-genai folder; time to first token = append_tokens(prompt); then new_tokens greedy tokens
  (and their decode speed), or with request["score"] those tokens fed one decode step at a time (teacher forcing),
  each scored from the logits before it: their negative log-likelihoods and greedy predictions.
- openvino: an OpenVINO GenAI LLMPipeline (dense, or XAttention sparse prefill); time to first token from its
  perf metrics; new_tokens greedy tokens.
Each answer carries peak_rss_mib: the process's peak resident memory during that request (VmHWM after resetting
it through /proc/self/clear_refs), weights included - what a user running only this runtime would see.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def vm_hwm_mib() -> float:
    """This process's peak resident memory (VmHWM), MiB."""
    return _status_mib("VmHWM")


def rss_mib() -> float:
    """This process's resident memory now (VmRSS), MiB."""
    return _status_mib("VmRSS")


class Onnx:
    def __init__(self, spec: dict):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if spec.get("library"):
            so.register_custom_ops_library(spec["library"])
        so.intra_op_num_threads = spec["threads"]
        self.sess = ort.InferenceSession(spec["model"], so, providers=["CPUExecutionProvider"])

    def __call__(self, ids: list[int], new_tokens: int, out: str | None, score: list[int] | None = None) -> dict:
        feeds = {"input_ids": np.asarray([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
        t0 = time.perf_counter()
        hidden = self.sess.run(None, feeds)[0][0]
        seconds = time.perf_counter() - t0
        if out:
            np.save(out, hidden)
        return {"ttft_s": seconds}


class Genai:
    def __init__(self, spec: dict):
        import onnxruntime_genai as og

        config = og.Config(spec["model"])
        config.overlay(
            json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": spec["threads"]}}}})
        )
        self.og, self.model = og, og.Model(config)

    def __call__(self, ids: list[int], new_tokens: int, out: str | None, score: list[int] | None = None) -> dict:
        if score:
            return self._score(ids, score)
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + new_tokens, do_sample=False, top_k=1)
        gen = self.og.Generator(self.model, params)
        t0 = time.perf_counter()
        gen.append_tokens(np.asarray(ids, np.int32))
        ttft = time.perf_counter() - t0
        steps = []  # seconds per generated token after the first (the prompt's call also yields the first)
        while not gen.is_done():
            t1 = time.perf_counter()
            gen.generate_next_token()
            steps.append(time.perf_counter() - t1)
        tokens = [int(t) for t in gen.get_sequence(0)[len(ids) :]]
        dt = sum(steps)
        ms = sorted(1e3 * x for x in steps[1:]) or [float("nan")]
        return {
            "ttft_s": ttft,
            "tokens": tokens,
            "decode_tok_s": len(tokens) / dt if dt > 0 else float("nan"),
            "decode_ms": float(np.median(ms)),
            "decode_p90_ms": float(np.percentile(ms, 90)),
        }

    def _score(self, ids: list[int], score: list[int]) -> dict:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + len(score), do_sample=False, top_k=1)
        gen = self.og.Generator(self.model, params)
        t0 = time.perf_counter()
        gen.append_tokens(np.asarray(ids, np.int32))
        ttft = time.perf_counter() - t0
        nll, preds = [], []
        for t in score:
            z = gen.get_logits()[0, -1].astype(np.float64)  # the next position's logits
            m = z.max()
            nll.append(float(m + np.log(np.exp(z - m).sum()) - z[t]))
            preds.append(int(z.argmax()))
            gen.append_tokens(np.asarray([t], np.int32))  # one decode step
        return {"ttft_s": ttft, "score_nll": nll, "score_preds": preds}


class OpenVino:
    def __init__(self, spec: dict):
        import openvino as ov
        import openvino_genai as ov_genai

        sc = ov_genai.SchedulerConfig()
        sc.enable_prefix_caching = False  # else a repeated prompt is served from the cache
        if spec.get("sparse") == "xattention":
            sc.use_sparse_attention = True
            sc.sparse_attention_config = ov_genai.SparseAttentionConfig(mode=ov_genai.SparseAttentionMode.XATTENTION)
        props = {
            "ATTENTION_BACKEND": "PA",
            "INFERENCE_NUM_THREADS": spec["threads"],
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        }
        if spec.get("precision", "f32") == "f32":  # on AVX512_BF16 CPUs OpenVINO would compute in bf16 / f16 KV
            props |= {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
        self.ov, self.ov_genai = ov, ov_genai
        self.pipe = ov_genai.LLMPipeline(spec["model"], "CPU", scheduler_config=sc, **props)

    def __call__(self, ids: list[int], new_tokens: int, out: str | None, score: list[int] | None = None) -> dict:
        x = np.asarray([ids], np.int64)
        inputs = self.ov_genai.TokenizedInputs(self.ov.Tensor(x), self.ov.Tensor(np.ones_like(x)))
        cfg = self.ov_genai.GenerationConfig()
        cfg.max_new_tokens, cfg.min_new_tokens, cfg.do_sample = new_tokens, new_tokens, False
        res = self.pipe.generate(inputs, cfg)
        return {
            "ttft_s": res.perf_metrics.get_ttft().mean / 1000.0,
            "tokens": [int(t) for t in res.tokens[0]],
            "decode_ms": float(res.perf_metrics.get_tpot().mean),  # mean time per output token (no per-token times)
        }


class Worker:
    """The caller's side: a runtime in its own process, one request per prompt."""

    def __init__(self, python: str, kind: str, spec: dict):
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), kind, json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._read()  # {"ready": true}, or the worker died loading the model

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker exited with code {self.proc.wait()} (its stderr is above)")
        return json.loads(line)

    def __call__(
        self, ids: list[int], new_tokens: int = 0, out: str | None = None, score: list[int] | None = None
    ) -> dict:
        """{"ttft_s", "peak_rss_mib", and "tokens" for generating kinds; "score_nll", "score_preds" for genai with
        score} or {"error", ...}."""
        req = {"ids": ids, "new_tokens": new_tokens, "out": out, "score": score}
        self.proc.stdin.write(json.dumps(req) + "\n")
        return self._read()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already gone
            self.proc.stdin.close()
        self.proc.wait()


KINDS = {"onnx": Onnx, "genai": Genai, "openvino": OpenVino}


def main() -> None:
    kind, spec = sys.argv[1], json.loads(sys.argv[2])
    runner = KINDS[kind](spec)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        _reset_peak()
        try:
            ans = runner(req["ids"], req["new_tokens"], req.get("out"), req.get("score"))
        except Exception as e:  # reported to the caller as this request's failure; the worker stays up
            ans = {"error": f"{type(e).__name__}: {e}"}
        ans["peak_rss_mib"] = vm_hwm_mib()
        print(json.dumps(ans), flush=True)


if __name__ == "__main__":
    main()
