"""Foresight: defect prediction with ONNX models, model registry, alerts, training."""
