"""Deployment of trained FBNetV3IS models outside PyTorch (ONNX, int8)."""

# what a model can run on, as latency is timed: PyTorch (nars predict's path), the nars deploy
# graph in onnxruntime, or that graph quantized (nars deploy --int8)
ENGINES = ("torch", "onnxruntime", "onnxruntime-int8")
