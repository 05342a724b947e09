"""edgetransfer.gates: the sample-sized flip gate and the TensorRT-preset rule."""

from __future__ import annotations

import numpy as np

from edgetransfer.gates import GateSpec, flip_gate, is_tensorrt_preset
from edgetransfer.targets import QuantizationPreset, load_target


def _logits(n=24, c=3, margin=3.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    x = rng.normal(0, 0.05, (n, c))
    x[np.arange(n), y] += margin
    return x


def test_a_borderline_flip_of_24_images_passes():
    """A 98 % agreement bar fails one flip of 24 (95.8 %); the flip of an image fp32 was not sure of does not count."""
    ref = _logits()
    ref[0] = [1.0, 1.01, 0.0]  # softmax margin 0.004 < 0.1: not decisive
    cand = ref + 0.01
    cand[0] = [1.02, 1.0, 0.0]
    g = flip_gate(ref, cand, name="t")
    assert g.passed and g.figures["flips"] == 1 and g.figures["decisive_flips"] == 0
    assert g.figures["images"] == 24 and g.figures["decisive_images"] == 23


def test_a_decisive_flip_fails_unless_the_logits_agree():
    ref = _logits()
    cand = ref.copy()
    cand[3] = np.roll(cand[3], 1)  # fp32 was sure, the candidate says another class
    g = flip_gate(ref, cand, name="t")
    assert not g.passed and g.figures["decisive_flips"] == 1 and g.figures["allowed_flips"] == 0
    assert "1 of 24 decisive" in g.reason
    # on 300 decisive images 1 % = 3 flips are allowed
    ref3, cand3 = _logits(300), _logits(300)
    cand3[:3] = np.roll(cand3[:3], 1, axis=1)
    assert flip_gate(ref3, cand3, name="t").passed
    cand3[:4] = np.roll(cand3[:4], 1, axis=1)
    assert not flip_gate(ref3, cand3, name="t", spec=GateSpec(max_rel_logit_diff=0.0)).passed
    # the same 4 flips pass on a loose logit tolerance (two kernels that differ only by rounding)
    assert flip_gate(ref3, cand3, name="t", spec=GateSpec(max_rel_logit_diff=10.0)).passed
    nan = ref.copy()
    nan[0, 0] = np.nan
    assert not flip_gate(ref, nan, name="t").passed


def test_tensorrt_preset_rule():
    assert is_tensorrt_preset(QuantizationPreset.named("tensorrt").to_dict())
    assert is_tensorrt_preset(load_target("jetson-orin-nano").quantization.to_dict())
    assert not is_tensorrt_preset(load_target("x86-cpu").quantization.to_dict())
    assert not is_tensorrt_preset(None)
