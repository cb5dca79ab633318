"""The portable training step: ONNX Runtime's training graph lowered to standard ONNX operators, with
AdamW appended, so a stock `onnxruntime` (any release, platform or provider) can train the adapter."""
