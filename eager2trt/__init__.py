"""eager2trt: eager-mode quantized PyTorch CNNs to TensorRT INT8, verified at every step."""

__version__ = "0.1.0"
