"""Per-target builds. Mobile converters, one per format, found through a registry keyed by the
format names of a target's ``formats`` field:

``tflite`` :class:`~edgetransfer.builders.tflite.TfliteFromTorch` (LiteRT, fp32 / full-integer INT8),
``pte`` :class:`~edgetransfer.builders.executorch.PteFromTorch` (ExecuTorch + XNNPACK, fp32 / INT8),
``mlpackage`` :class:`~edgetransfer.builders.coreml.MlpackageFromTorch` (Core ML, fp16 / int8 weights),
``ort`` :class:`~edgetransfer.builders.ort_mobile.OrtFromOnnx` (ONNX Runtime mobile, per ONNX file).

Importing this package imports no backend; each converter imports its own when it runs.
"""

from .base import BuildInputs, Builder, get_builder, register_builder, registered_builders

from . import coreml as _coreml  # noqa: F401,E402
from . import executorch as _executorch  # noqa: F401,E402
from . import ort_mobile as _ort_mobile  # noqa: F401,E402
from . import tflite as _tflite  # noqa: F401,E402

__all__ = ["BuildInputs", "Builder", "get_builder", "register_builder", "registered_builders"]
