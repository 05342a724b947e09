"""The INT8 ladder's configuration (:class:`LadderConfig`): which rungs of
:mod:`~edgetransfer.quantize.ladder` run, with what settings. Every field is recorded in the
INT8 manifest (``details.ladder_config``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError
from .ranges import ESTIMATORS


@dataclass(frozen=True)
class LadderConfig:
    """``estimators``: range estimators tried after the recipe's method (rung a);
    ``equalize``: ``auto`` / ``on`` / ``off`` (rung b); ``bias_correction`` (rung c);
    ``max_float_share``: cap of rung e, fraction of compute nodes kept in float (0.05 = 5 %);
    ``fallback_candidates``: units rung e tries as the next addition at each step, the best first by
    logit error alone per ms (each costs one quantization to learn which nodes ONNX Runtime forces
    into float with it, and one gated forward pass); ``fallback_pairs``: each pair of the first that
    many candidates is tried as one addition too (6: 15 pairs, those within the cap cost one
    quantization each; on digits the stem's and block 0's depthwise weights in float together gave
    val KL 0.0130, each alone 0.0604 / 0.0574, 2026-12-08); ``fallback_trials``: of the options that
    lower the set error, how many (best reduction per ms first) are made, bias-corrected and judged on val at each
    step, stopping at the first that holds (3: in session 19's four digits runs the set error,
    before its bias gating, :class:`~edgetransfer.quantize.sensitivity.UnitScorer`, ranked the
    good set first, second or third, or not at all);
    ``qat``: rung f, ``auto`` (only when nothing held by then) / ``on`` / ``off``; ``qat_nodes``: the
    number of last weighted nodes (Conv/Gemm/MatMul) rung f fine-tunes, with everything after them
    (2, the default, ``qat.qat_tail``: EfficientNet-Lite0's 1x1 conv_head + the classifier; measured on
    digits 2026-12-03, same ladder otherwise, on the 1024 training images of the QAT rung: val mean KL
    0.0024 and agreement 0.9889, holds, test agreement 0.9889 and KL 0.0028 in 55 s, where the head
    alone gave test agreement 0.981; a tail torch cannot run here, e.g. one reading a residual from before
    the cut, falls back to the head, recorded as ``tail_skipped``; 1: the classifier head alone, ``qat.qat_head``; on 128
    calibration images the tail over-fitted on hymenoptera: val KL 8.6e-5 -> 8.1e-5 in 315 s); ``adaround``: rung d, ``off`` (the default: opt-in, it costs minutes) / ``auto`` (only
    when nothing of a-c holds) / ``on`` (always measured); ``adaround_layers``: how many of the most
    sensitive weighted layers it re-rounds (0 = every quantized Conv/Gemm; 8, measured on digits
    with EfficientNet-Lite0, val mean KL vs fp32 after rung d: 4 layers 0.0162, 8 layers 0.0080, 16 layers
    0.0102, bias correction alone 0.0197; the layer-wise reconstruction does not track the logits
    beyond the most sensitive layers; on a CPU without VNNI (7-bit weights, AMD EPYC AVX2, ``make demo``
    bundle, 2026-12-07) 8 layers took val KL 0.0500 -> 0.0154 in 258 s and rung f on it ended at KL 0.0079,
    agreement 0.992, top-1 equal to fp32; 16 layers 0.0163 in 695 s, rung f on it KL 0.0063, agreement 0.989,
    -0.56 pt (3 lost, 1 gained); all 50 layers (0) 0.0072 in 1282 s, and rung f on it KL 0.0045 but
    4 images lost, 1 gained (-0.84 pt, over the budget): no default moves; on the calibration images only: with 1024 training images at
    minibatch 32, measured on digits 2026-12-03, one layer took 351-399 s on one torch thread, the
    600 s cap let 2 layers run and val mean KL was 0.0575, worse than bias correction's 0.0194);
    ``adaround_iters``: Adam
    steps per layer; ``adaround_seconds``: no layer is started after this many seconds.
    ``speed_placement``: ``auto`` (for ONNX Runtime's Q/DQ placement when ``host_is_target``) / ``on``
    / ``off``: compute nodes whose INT8 kernel is slower than fp32 on this host stay in float
    (:mod:`~edgetransfer.quantize.placement`); ``host_is_target``: this host's CPU is the target's kind
    (:meth:`edgetransfer.targets.Target.host_is_target`), so its per-node times are the target's;
    ``placement_runtimes``: the runtimes a placed file must be faster on (``onnxruntime``, and on
    balance with ``openvino`` where the target benchmarks it: the pipeline passes the target's
    ``runtimes``; :func:`~edgetransfer.quantize.placement.placement_verdict`)."""

    estimators: tuple[str, ...] = ("mse",)
    equalize: str = "auto"
    bias_correction: bool = True
    max_float_share: float = 0.05
    fallback_candidates: int = 8
    fallback_trials: int = 3
    fallback_pairs: int = 6
    qat: str = "auto"
    qat_nodes: int = 2
    adaround: str = "off"
    adaround_layers: int = 8
    adaround_iters: int = 500
    adaround_seconds: float = 600.0
    speed_placement: str = "auto"
    host_is_target: bool = True
    placement_runtimes: tuple[str, ...] = ("onnxruntime", "openvino")

    def __post_init__(self) -> None:
        bad = [e for e in self.estimators if e not in ESTIMATORS]
        if bad:
            raise ConfigError(f"unknown range estimator(s) {bad}; known: {', '.join(ESTIMATORS)}")
        if self.qat not in ("auto", "on", "off"):
            raise ConfigError(f"qat must be auto, on or off (got {self.qat!r})")
        if self.adaround not in ("auto", "on", "off"):
            raise ConfigError(f"adaround must be auto, on or off (got {self.adaround!r})")
        if self.adaround_layers < 0 or self.adaround_iters < 1 or self.adaround_seconds <= 0:
            raise ConfigError("adaround_layers must be >= 0 (0 = all), adaround_iters >= 1 and adaround_seconds > 0")
        if self.speed_placement not in ("auto", "on", "off"):
            raise ConfigError(f"speed_placement must be auto, on or off (got {self.speed_placement!r})")
        if not set(self.placement_runtimes) <= {"onnxruntime", "openvino"}:
            raise ConfigError(f"placement_runtimes: onnxruntime and/or openvino (got {list(self.placement_runtimes)})")
        if self.equalize not in ("auto", "on", "off"):
            raise ConfigError(f"equalize must be auto, on or off (got {self.equalize!r})")
        if self.fallback_candidates < 1 or self.fallback_trials < 1 or self.fallback_pairs < 0:
            raise ConfigError(f"fallback_candidates and fallback_trials must be >= 1, fallback_pairs >= 0 (got "
                              f"{self.fallback_candidates}, {self.fallback_trials}, {self.fallback_pairs})")
        if not 0.0 <= self.max_float_share <= 1.0:
            raise ConfigError(f"--max-float-share must be a fraction in [0, 1] (got {self.max_float_share}); 0.05 = 5 %")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
