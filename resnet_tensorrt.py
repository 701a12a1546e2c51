"""Validate a TensorRT engine (or an ONNX model in onnxruntime, --onnx) on CIFAR-10 against PyTorch's accuracy.

The reference's script name; the logic is eager2trt.cli.validate (also installed as `eager2trt-validate`).
"""

from eager2trt.cli.validate import run

if __name__ == "__main__":
    run()
