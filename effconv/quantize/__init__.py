"""Post-training int8 quantization of effconv artifacts (ONNX, Core ML, TFLite, ExecuTorch) with a quality gate."""
