"""The op tests and the fuzz slice under AddressSanitizer + UndefinedBehaviorSanitizer.

The library is rebuilt with `-DICEFORMER_SANITIZE=ON` and the ops tests run again in a child Python that loads it
(ICEFORMER_OPS_LIBRARY). Python and ONNX Runtime are not instrumented, so the ASan runtime is preloaded, with
libstdc++ (ASan's exception interceptor needs it loaded first); ORT's allocations then go through ASan's malloc, and
session_options() turns ORT's CPU arena off for a sanitizer build so every tensor is its own block with red zones.
Leak checking is off (the interpreter's own allocations would drown it). The harness itself is checked first: a
planted overrun and a planted signed overflow must each fail the child.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPS_TESTS = ROOT / "tests" / "ops"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.sanitizer,
    pytest.mark.skipif(
        shutil.which("cmake") is None or shutil.which("g++") is None,
        reason="the sanitizer build needs cmake and g++ on PATH",
    ),
]


def runtime(name: str) -> str:
    return subprocess.run(
        ["g++", f"-print-file-name={name}"], capture_output=True, text=True, check=True
    ).stdout.strip()


def sanitizer_env(library: Path | None = None) -> dict:
    env = dict(os.environ)
    env["LD_PRELOAD"] = f"{runtime('libasan.so')} {runtime('libstdc++.so')}"
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=0"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    if library is not None:
        env["ICEFORMER_OPS_LIBRARY"] = str(library)
    return env


@pytest.fixture(scope="module")
def sanitized_library(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("asan-build")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    for cmd in (
        [
            "cmake",
            "-S",
            str(ROOT),
            "-B",
            str(build),
            *gen,
            "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
            "-DICEFORMER_SANITIZE=ON",
        ],
        ["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)],
    ):
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return build / "ops" / "libiceformer_ops.so"


@pytest.mark.parametrize(
    "body,report",
    [
        ("int* a = new int[4]; int s = a[x + 4]; delete[] a; return s;", "heap-buffer-overflow"),
        ("int big = 2147483647; return big + x;", "signed integer overflow"),
    ],
)
def test_the_harness_catches_a_planted_bug(tmp_path, body, report):
    src = tmp_path / "planted.cc"
    src.write_text(f'extern "C" int planted(int x) {{ {body} }}\n')
    lib = tmp_path / "libplanted.so"
    subprocess.run(
        [
            "g++",
            "-shared",
            "-fPIC",
            "-O0",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
            "-o",
            str(lib),
            str(src),
        ],
        check=True,
    )
    code = f"import ctypes; ctypes.CDLL({str(lib)!r}).planted(1)"
    res = subprocess.run([sys.executable, "-c", code], env=sanitizer_env(), capture_output=True, text=True)
    assert res.returncode != 0 and report in res.stderr, res.stderr[-2000:]


def test_ops_tests_and_fuzz_slice_under_sanitizers(sanitized_library):
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
            from iceformer.ops import _library, session_options
            print(_library.get_library_path(), _library.sanitized(), session_options().enable_cpu_mem_arena)"""),
        ],
        env=sanitizer_env(sanitized_library),
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.split() == [str(sanitized_library.resolve()), "True", "False"]
    # Every ops test file but this one: the exact, k-NN, GQA-compatible and bad-input tests, the fuzz slice and
    # its regressions, the concurrency tests.
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(OPS_TESTS),
            f"--ignore={Path(__file__)}",
            f"--ignore={OPS_TESTS / 'test_build.py'}",
        ],
        env=sanitizer_env(sanitized_library),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "ERROR: AddressSanitizer" not in res.stderr and "runtime error:" not in res.stderr
