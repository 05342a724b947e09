"""edgetransfer: take a pretrained image model to a measured, deployable edge artifact.

Stages (each reads files on disk and writes new artifacts with a sidecar manifest):
train -> export (ONNX fp32, parity-checked) -> quantize (INT8 QDQ) -> benchmark (report).

The benchmark path (``edgetransfer.bench``, ``edgetransfer.runtime``, ``edgetransfer.data``,
``edgetransfer.artifacts``, ``edgetransfer.targets``) imports without torch so it can run on a
device that only has ``edgetransfer[device]`` installed.

Python API (:mod:`edgetransfer.api`, the same code path as the CLI)::

    import edgetransfer as et
    b = et.Bundle.train("data/bees", "runs/bees", target="x86-cpu", epochs=10)
    b.export(); b.quantize(); b.build()
    report = b.benchmark()          # et.Report: typed rows (et.Row)
    et.Bundle("runs/bees")          # an existing bundle
"""

__version__ = "0.1.0"

_API = ("Bundle", "Artifact", "Report", "Row", "TrainSummary")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """The API classes, imported on first use (``import edgetransfer`` stays light and torch-free)."""
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgetransfer' has no attribute {name!r}")
