"""Standard vocabulary of the tool: artifact formats, numeric precisions, runtimes, row statuses."""

from __future__ import annotations

from enum import Enum


class StrEnum(str, Enum):
    """``enum.StrEnum`` for Python 3.10 too: members compare equal to their string value."""

    def __str__(self) -> str:
        return str(self.value)


class Format(StrEnum):
    CHECKPOINT = "checkpoint"  # edgetransfer PyTorch checkpoint (.pt)
    ONNX = "onnx"
    ENGINE = "engine"  # TensorRT serialized engine
    TFLITE = "tflite"
    PTE = "pte"  # ExecuTorch program
    MLPACKAGE = "mlpackage"  # Core ML
    ORT = "ort"  # ONNX Runtime mobile flatbuffer


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Runtime(StrEnum):
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"
    LITERT = "litert"
    EXECUTORCH = "executorch"
    COREML = "coreml"


class Status(StrEnum):
    OK = "ok"
    FAILED = "failed"
    UNAVAILABLE = "unavailable"  # runtime not installed here
    NOT_RUNNABLE = "not_runnable"  # cannot run on this host at all (Core ML off macOS, TRT w/o GPU)
    BUDGET_EXCEEDED = "budget_exceeded"
    GATE_FAILED = "gate_failed"  # an agreement gate (edgetransfer.gates) failed: written, measured, flagged
