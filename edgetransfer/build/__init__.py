"""Build stage: per-target compiled artifacts (TensorRT engines, mobile formats)."""
