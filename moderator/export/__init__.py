"""Offline tools that build model directories: ONNX export and the demo model trainer."""
