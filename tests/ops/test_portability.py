"""The library on CPUs this machine is not (correctness only; nothing is timed under emulation):
- the kernels' own test (every SIMD tier against the scalar reference, tests/ops/native/kernels_test.cc), built
  natively, run under qemu-x86_64 as an AVX2-only Haswell, and cross-compiled for ARM64 and run under qemu-aarch64;
- the installed op library loaded into Python under the emulated Haswell: it must choose the avx2 tier and run the
  exact and k-NN paths of KnnAttention and GroupQueryAttention against the float64 reference (any stray AVX-512
  instruction would be a SIGILL).

The emulators and the cross-compiler come from Debian (qemu-user-static, g++-aarch64-linux-gnu); without them these
tests skip, unless ICEFORMER_CROSS_TESTS=1 (the README's test command and CI) makes their absence a failure."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Under tests/ops/test_sanitizers.py's harness the host's ASan runtime is preloaded into every child, which the
# emulators cannot take; these tests run in the ordinary suite.
pytestmark = [
    pytest.mark.cross,
    pytest.mark.skipif(
        "libasan" in os.environ.get("LD_PRELOAD", ""), reason="sanitizer harness: ASan preloaded, emulators cannot run"
    ),
]

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
# Haswell without the TSX / PCID / x2APIC features qemu's TCG cannot emulate (it would warn on every start).
HASWELL = ["qemu-x86_64-static", "-cpu", "Haswell,-rtm,-hle,-pcid,-x2apic,-tsc-deadline,-invpcid"]
ARM64 = ["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu"]


def need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        msg = f"{', '.join(missing)} not on PATH (Debian: qemu-user-static, g++-aarch64-linux-gnu, cmake)"
        if os.environ.get("ICEFORMER_CROSS_TESTS") == "1":
            pytest.fail(msg + " but ICEFORMER_CROSS_TESTS=1")
        pytest.skip(msg)


def build_kernel_test(build: Path, *cmake_args) -> Path:
    cfg = ["cmake", "-S", str(OPS), "-B", str(build), "-Wno-dev", "-DICEFORMER_KERNEL_TESTS=ON", *cmake_args]
    for cmd in (cfg, ["cmake", "--build", str(build), "-j2", "--target", "iceformer_kernels_test"]):
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return build / "iceformer_kernels_test"


def run_kernel_test(cmd, tiers):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines[:-1]] == tiers, res.stdout
    assert all(ln.endswith(": ok") for ln in lines[:-1]) and lines[-1].endswith(", 0 failures"), res.stdout


@pytest.fixture(scope="module")
def native_kernel_test(tmp_path_factory):
    need("cmake")
    return build_kernel_test(tmp_path_factory.mktemp("kernels-x86"))


def test_kernels_of_every_tier_match_the_scalar_reference_here(native_kernel_test):
    from iceformer.ops import simd_tiers

    run_kernel_test([str(native_kernel_test)], simd_tiers())


def test_kernels_on_an_avx2_only_cpu(native_kernel_test):
    need("qemu-x86_64-static")
    run_kernel_test([*HASWELL, str(native_kernel_test)], ["avx2", "scalar"])


def test_kernels_on_arm64(tmp_path):
    need("cmake", "aarch64-linux-gnu-g++", "qemu-aarch64-static")
    exe = build_kernel_test(
        tmp_path / "kernels-arm64", f"-DCMAKE_TOOLCHAIN_FILE={OPS / 'cmake/aarch64-linux-gnu.cmake'}"
    )
    run_kernel_test([*ARM64, str(exe)], ["neon", "scalar"])


# Runs inside the emulated Haswell and natively with ICEFORMER_SIMD=avx2: the installed library through ORT's CPU
# provider, exact path against float64, k-NN path (sparse sets, tail estimate, key padding) saved for comparison.
_SCRIPT = """
import sys
import numpy as np
from tests.support.ops import run_case
from iceformer.ops import knn_attention_reference, simd_variant
from iceformer.ops.cases import AttentionCase
knn = dict(top_k=8, max_candidates=8, local_window=8, num_sink=2, min_keys=0, rank=7, tail_samples=32, tail_limit=1.0)
exact = [AttentionCase(Hq=4, Hkv=2, S=77, T=301, is_causal=1, D=48, Dv=24),
         AttentionCase(Hq=2, Hkv=1, S=70, T=700, is_causal=0, D=64, Dv=64, key_padding_mask="bool")]
for c in exact:
    ref = knn_attention_reference(**c.inputs(), **c.op_attrs())
    np.testing.assert_allclose(run_case(c), ref, atol=1e-5, rtol=1e-4)
k = AttentionCase(Hq=2, Hkv=1, S=128, T=1024, is_causal=1, D=48, Dv=24, attrs=knn)
outs = [run_case(x) for x in (k, k.with_(is_causal=0, B=2, S=70, T=999, key_padding_mask="bool"))]
np.save(sys.argv[1], np.concatenate([o.ravel() for o in outs]))
print(simd_variant())
"""


def test_op_library_on_an_avx2_only_cpu(tmp_path):
    """Loads and runs under the emulated Haswell, chooses avx2 there, and gives exactly the native avx2 tier's
    output (the same instructions; the emulator's arithmetic is IEEE)."""
    need("qemu-x86_64-static")
    # the child imports tests.support from the repository root
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    runs = {"native": ([sys.executable], "avx2"), "haswell": ([*HASWELL, sys.executable], "auto")}
    out = {}
    for name, (prefix, tier) in runs.items():
        path = tmp_path / f"{name}.npy"
        res = subprocess.run(
            [*prefix, "-c", _SCRIPT, str(path)],
            env=dict(env, ICEFORMER_SIMD=tier),
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert res.returncode == 0, res.stdout + res.stderr[-3000:]
        assert res.stdout.strip() == "avx2", res.stdout
        out[name] = np.load(path)
    np.testing.assert_array_equal(out["haswell"], out["native"])
