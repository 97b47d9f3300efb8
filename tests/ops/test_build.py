"""The build's header lookup: a wrong ORT_INCLUDE_DIR stops CMake with a message naming the problem."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not on PATH (the wheel build brings its own)")
def test_wrong_ort_include_dir_is_reported(tmp_path):
    res = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), f"-DORT_INCLUDE_DIR={tmp_path / 'nowhere'}"],
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0
    assert "does not contain onnxruntime_cxx_api.h" in res.stderr
