"""Predictive prefetch: access log, per-object features, the ONNX access predictor and its training."""
