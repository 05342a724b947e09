"""7-bit INT8 weights (``QuantizationPreset.reduce_range``, ORT's ``reduce_range``) and the CPU
check that turns them on (``edgetransfer.host.int8_saturates``): on an x86 CPU without VNNI, ONNX
Runtime's u8s8 kernels add two u8 x s8 products in a saturating int16, so a QDQ model with 8-bit
weights computes another function with graph optimisations on (fused kernels) than off (float
reference semantics)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("onnxruntime.quantization", reason="the export extra (onnxruntime) is not installed")

from ..fixtures.onnx_models import SIZE, write_onnx  # noqa: E402
from .test_rungs import _dw_net, _quantize  # noqa: E402

from edgetransfer.errors import TargetError  # noqa: E402
from edgetransfer.host import int8_saturates  # noqa: E402
from edgetransfer.quantize.ort_qdq import preprocess, weights_reduced  # noqa: E402
from edgetransfer.runtime.ort import onnx_logits  # noqa: E402
from edgetransfer.targets import QuantizationPreset  # noqa: E402

AVX2 = {"arch": "x86_64", "cpu_features": ["avx2", "fma", "f16c"]}  # e.g. AMD Zen 3, Intel Skylake client


def test_int8_saturates_on_x86_without_vnni_only():
    assert int8_saturates(AVX2)
    assert int8_saturates({"arch": "x86_64", "cpu_features": ["avx2", "avx512f"]})  # Skylake-SP: AVX-512 without VNNI
    assert not int8_saturates({"arch": "x86_64", "cpu_features": ["avx2", "avx512f", "avx512_vnni"]})
    assert not int8_saturates({"arch": "x86_64", "cpu_features": ["avx2", "avx_vnni"]})  # Alder Lake
    assert not int8_saturates({"arch": "aarch64", "cpu_features": ["asimd"]})  # ARM: int32 dot products


def test_preset_reduce_range_resolution():
    assert weights_reduced(QuantizationPreset(reduce_range=True))
    assert not weights_reduced(QuantizationPreset(reduce_range=False))
    assert weights_reduced(QuantizationPreset()) == int8_saturates()  # None: this CPU decides
    assert not weights_reduced(QuantizationPreset.named("tensorrt", reduce_range=True))  # TensorRT never saturates
    with pytest.raises(TargetError, match="reduce_range"):
        QuantizationPreset(reduce_range="yes")


def _wide_net():
    """conv1 (3->8, every weight of channel c +-1 so each channel's scale stores +-qmax) on inputs up
    to 4: u8 activations near 255 times weights near 127, the products VPMADDUBSW saturates."""
    rng = np.random.default_rng(11)
    w1 = np.sign(rng.normal(size=(8, 3, 3, 3)))
    w2 = rng.normal(0, 0.3, (8, 1, 3, 3))
    w3 = rng.normal(0, 0.5, (4, 8, 1, 1))
    m = _dw_net(rng, w1, np.zeros(8), w2, w3)
    m.graph.node[0].attribute.extend([onnx.helper.make_attribute("pads", [1, 1, 1, 1])])
    return m


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    d = tmp_path_factory.mktemp("rr")
    src, pre = d / "s.onnx", d / "pre.onnx"
    write_onnx(_wide_net(), src)
    preprocess(src, pre)
    x = np.random.default_rng(0).uniform(0, 4, (32, 3, SIZE, SIZE)).astype(np.float32)
    return pre, x


def _on_off(q, x):
    on, off = onnx_logits(q, x), onnx_logits(q, x, optimize=False)
    return float(np.abs(on - off).mean() / np.abs(off).mean())


@pytest.mark.parametrize("reduced", [True, False])
def test_weights_are_stored_in_the_reduced_range_and_keep_fused_kernels_exact(wide, tmp_path, reduced):
    pre, x = wide
    q, _ = _quantize(pre, tmp_path, x, f"rr{reduced}", QuantizationPreset(reduce_range=reduced))
    w = [numpy_helper.to_array(i) for i in onnx.load(str(q)).graph.initializer if i.name.startswith("w1")
         and numpy_helper.to_array(i).dtype == np.int8 and numpy_helper.to_array(i).ndim == 4]
    assert len(w) == 1
    qmax = 64 if reduced else 127
    assert np.abs(w[0].astype(int)).reshape(8, -1).max(1).tolist() == [qmax] * 8  # ORT: (-64, 64) reduced, else 127
    diff = _on_off(q, x)
    if reduced:  # 255 x 64 x 2 = 32640 fits int16: the fused kernels compute the reference function (measured 0.0000)
        assert diff < 0.02, diff
    elif int8_saturates():  # 255 x 127 x 2 = 64770 does not: measured 0.122 on an AMD EPYC with AVX2, no VNNI (2026-12-07)
        assert diff > 0.05, diff
    else:  # VNNI accumulates in int32
        assert diff < 0.02, diff
