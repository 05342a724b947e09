"""Quantize stage: fp32 ONNX -> INT8 QDQ ONNX (static PTQ with a calibration set)."""
