"""The house style, checked where the tests run: ruff (lint and format, configured in pyproject.toml) over the Python
tree and clang-format (.clang-format) over ops/csrc, both pinned in the test extra."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPP = sorted(str(p) for p in (ROOT / "ops" / "csrc").glob("*") if p.suffix in (".cc", ".h"))


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert path is not None, f"{name} is not installed (it is in the test extra: pip install '.[test]')"
    return path


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff(args):
    res = _run([_tool("ruff"), *args])
    assert res.returncode == 0, res.stdout + res.stderr


def test_clang_format():
    assert len(CPP) > 30  # the kernels, headers and the registration
    res = _run([_tool("clang-format"), "--dry-run", "--Werror", *CPP])
    assert res.returncode == 0, res.stdout + res.stderr
