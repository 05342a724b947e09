"""The .tflite manifest read from the file (tensor names, dtypes, scale / zero point) and the
LiteRT runner's float32 feed contract over it: a tiny torch model converted with litert-torch
(seconds; skipped where the litert extra is not installed, e.g. outside .venv-mobile)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("litert_torch", reason="litert extra not installed: pip install 'edgetransfer[litert]' (.venv-mobile)")
torch = pytest.importorskip("torch")

from edgetransfer.artifacts import Manifest  # noqa: E402
from edgetransfer.builders.tflite import tflite_io  # noqa: E402
from edgetransfer.runtime.litert import LiteRtRunner  # noqa: E402


def test_manifest_io_comes_from_the_file(tmp_path):
    import litert_torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    x = torch.rand(1, 3, 16, 16)
    p = tmp_path / "tiny.tflite"
    litert_torch.convert(net, (x,)).export(str(p))
    ins, outs = tflite_io(p)
    assert [i["shape"] for i in ins] == [[1, 3, 16, 16]] and [o["shape"] for o in outs] == [[1, 3]]
    assert ins[0]["dtype"] == outs[0]["dtype"] == "float32" and ins[0]["scale"] == 0.0 and ins[0]["zero_point"] == 0
    assert isinstance(ins[0]["name"], str) and ins[0]["name"]  # the file's own tensor name
    m = Manifest(format="tflite", precision="fp32", file=p.name, class_names=["a", "b", "c"], inputs=ins, outputs=outs,
                 preprocessing={}, producer="tests")
    with LiteRtRunner(p, m, threads=1) as r:
        assert r.input_specs[0]["dtype"] == "float32" and r.input_specs[0]["name"] == ins[0]["name"]
        got = r(x.numpy())
    assert np.abs(got - net(x).detach().numpy()).max() < 1e-4
