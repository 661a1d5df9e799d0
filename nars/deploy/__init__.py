"""Deployment of trained FBNetV3IS models outside PyTorch (ONNX)."""
