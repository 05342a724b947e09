"""Export stage: PyTorch checkpoint -> ONNX (fp32), parity-checked."""
