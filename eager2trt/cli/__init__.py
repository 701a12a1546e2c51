"""Command-line entry points; the top-level scripts (resnet_torch.py, onnx_gs.py, resnet_tensorrt.py) call these."""
