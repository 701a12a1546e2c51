"""Train (or load) ResNet on CIFAR-10, quantize it in eager mode, export FP32/INT8 ONNX and TorchScript."""
# The reference's script name; the logic is eager2trt.cli.quantize (also installed as `eager2trt-quantize`).
from eager2trt.cli.quantize import run

if __name__ == "__main__":
    run()
