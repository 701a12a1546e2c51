"""The artifact names, the reference's, in one place."""

from pathlib import Path

OUTPUT_DIR = Path("saved_models")
FP32_STATE = "resnet_cifar10.pt"
TRAIN_STATE = "resnet_cifar10.train-state.pt"
FP32_ONNX = "resnet_cifar10.onnx"
FP16_ONNX = "resnet_cifar10_fp16.onnx"
INT8_ONNX = "resnet_quantized_cifar10.onnx"
INT8_TORCHSCRIPT = "resnet_quantized_cifar10.pt"
INT8_ONNX_MODIFIED = "resnet_quantized_cifar10_modified.onnx"
INT8_ONNX_FAST = "resnet_quantized_cifar10_fast.onnx"
FP16_ENGINE = "resnet_cifar10_fp16.engine"
INT8_ENGINE = "resnet_cifar10_int8.engine"
METRICS = "metrics.json"
DATA_DIR = Path("data")
