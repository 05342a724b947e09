"""``--exporter auto|optimum|torch``: which exporter runs, and the reason the manifest records."""

from __future__ import annotations

import pytest

from edgetransfer.errors import ConfigError
from edgetransfer.export import hf
from edgetransfer.export.onnx import ExportConfig


def test_choose_exporter(monkeypatch):
    monkeypatch.setattr(hf, "optimum_available", lambda: True)
    assert hf.choose_exporter("auto", True) == ("optimum", "auto: Hugging Face model and optimum installed")
    assert hf.choose_exporter("auto", False) == ("torch", "auto: not a Hugging Face model")
    assert hf.choose_exporter("torch", True) == ("torch", "--exporter torch")
    assert hf.choose_exporter("optimum", True) == ("optimum", "--exporter optimum")
    with pytest.raises(ConfigError, match="Hugging Face models only"):
        hf.choose_exporter("optimum", False)
    monkeypatch.setattr(hf, "optimum_available", lambda: False)
    assert hf.choose_exporter("auto", True)[0] == "torch" and "optimum not installed" in hf.choose_exporter("auto", True)[1]
    with pytest.raises(ConfigError, match=r"edgetransfer\[hf\]"):
        hf.choose_exporter("optimum", True)
    with pytest.raises(ConfigError, match="auto, optimum or torch"):
        ExportConfig(exporter="onnx")
