"""Make the INT8 ONNX from resnet_torch.py TensorRT-ready (int8 symmetric Q/DQ) and prove it.

Rewrites by graph pattern, then lints the result against TensorRT's explicit-quantization rules and
checks in onnxruntime that it computes the same logits as the original (--mode exact), or (--mode fast:
the Q/DQ placement TensorRT fuses best) that it keeps PyTorch INT8's accuracy.
"""
# The reference's script name; the logic is eager2trt.cli.surgery (also installed as `eager2trt-surgery`).
from eager2trt.cli.surgery import run

if __name__ == "__main__":
    run()
