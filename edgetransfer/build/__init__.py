"""Build stage: per-target artifacts made from the bundle's ONNX files (TensorRT engines, ...)."""
