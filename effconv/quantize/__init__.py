"""Post-training int8 quantization of effconv artifacts (ONNX, Core ML, TFLite) with a quality gate."""
