"""edgetransfer: take a pretrained image model to a measured, deployable edge artifact.

Stages (each reads files on disk and writes new artifacts with a sidecar manifest):
train -> export (ONNX fp32, parity-checked) -> quantize (INT8 QDQ) -> benchmark (report).

The benchmark path (``edgetransfer.bench``, ``edgetransfer.runtime``, ``edgetransfer.data``,
``edgetransfer.artifacts``, ``edgetransfer.targets``) imports without torch so it can run on a
device that only has ``edgetransfer[device]`` installed.
"""

__version__ = "0.1.0"
