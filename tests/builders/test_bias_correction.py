"""Bias correction on a PyTorch model (the mobile INT8 ladder's rung c), on tiny hand-built nets
whose per-channel weight rounding shifts their outputs: the shift is measured here with an
independent fake-quantized forward (int8 symmetric per-channel weights, affine per-tensor inputs,
the scheme of PT2E's XNNPACKQuantizer and ai-edge-quantizer's static_wi8_ai8)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the train extra (torch) is not installed")
nn = torch.nn

from edgetransfer.builders.bias_correction import correct_biases_torch  # noqa: E402

STEP = 1.0 / 127  # weight step of a channel whose largest |w| is 1


def _rounded_down_weights(cin: int, cout: int) -> torch.Tensor:
    """(cout, cin, 1, 1): in every channel one weight 1.0 (sets scale = 1/127), the others at
    (k + 0.45) steps: each rounds DOWN by 0.45 of a step, a systematic shift per channel."""
    w = torch.zeros(cout, cin, 1, 1)
    for c in range(cout):
        w[c, 0] = 1.0
        w[c, 1:, 0, 0] = (torch.arange(1, cin) + c + 0.45) * STEP
    return w


class Net(nn.Module):
    def __init__(self, bn: bool, bias: bool):
        super().__init__()
        self.conv = nn.Conv2d(6, 4, 1, bias=bias)
        self.conv.weight.data = _rounded_down_weights(6, 4)
        self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
        if bn:
            self.bn.running_mean.fill_(0.3)
            self.bn.running_var.fill_(4.0)
            self.bn.weight.data.fill_(2.0)
            self.bn.bias.data.fill_(0.1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


def _x(n=32, seed=0):
    # positive inputs (mean 1): the rounding error adds up instead of averaging out
    return np.random.default_rng(seed).uniform(0.0, 2.0, (n, 6, 8, 8)).astype(np.float32)


def _fq_act(v: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = (hi - lo) / 255
    z = round(-128 - lo / s)
    return (torch.clamp(torch.round(v / s) + z, -128, 127) - z) * s


def _fq_w(w: torch.Tensor) -> torch.Tensor:
    s = (w.abs().reshape(w.shape[0], -1).amax(1) / 127).reshape(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(torch.round(w / s), -127, 127) * s


def _conv_out_shift(model: Net, ref: Net, x: np.ndarray) -> np.ndarray:
    """Per-channel mean over images and positions of bn(conv(x)): int8 ``model`` - float ``ref``."""
    t = torch.from_numpy(x)
    with torch.no_grad():
        f = ref.bn(ref.conv(t))
        if isinstance(model.bn, nn.BatchNorm2d):  # fold as the quantizers do, then quantize
            g = model.bn.weight / torch.sqrt(model.bn.running_var + model.bn.eps)
            w = model.conv.weight * g[:, None, None, None]
            b = ((model.conv.bias if model.conv.bias is not None else 0) - model.bn.running_mean) * g + model.bn.bias
        else:
            w, b = model.conv.weight, model.conv.bias
        q = torch.nn.functional.conv2d(_fq_act(t, float(t.min()), float(t.max())), _fq_w(w), b)
    return (q - f).mean(dim=(0, 2, 3)).numpy()


@pytest.mark.parametrize("bn,bias", [(True, False), (False, True), (False, False)])
def test_torch_bias_correction_cuts_a_per_channel_shift_fivefold(bn, bias):
    torch.manual_seed(0)
    ref = Net(bn, bias).eval()
    model = Net(bn, bias).eval()
    model.load_state_dict(ref.state_dict())
    x = _x()
    before = _conv_out_shift(model, ref, x)
    summary = correct_biases_torch(model, x, batch=8)
    assert summary["layers"] == 2 and summary["images"] == 32  # the conv and the Linear
    after = _conv_out_shift(model, ref, x)
    assert np.abs(before).min() > 0.01, before  # the shift is there (about -0.45 step x 5 weights x mean 1, x BN gain)
    assert np.abs(after).max() * 5 < np.abs(before).min(), (before, after)
    if bn:  # corrected through BatchNorm's beta, the conv keeps no bias
        assert model.conv.bias is None and not torch.equal(model.bn.bias, ref.bn.bias)
    else:  # a conv without bias gets one
        assert model.conv.bias is not None


def test_torch_bias_correction_refuses_no_images():
    with pytest.raises(ValueError, match="at least one calibration image"):
        correct_biases_torch(Net(False, True).eval(), np.zeros((0, 6, 8, 8), np.float32))
