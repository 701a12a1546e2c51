"""ONNX and TorchScript exports with a named input, a named output and a dynamic batch dimension."""

import warnings
from pathlib import Path

import torch

from .artifacts import atomic_path
from .contract import INPUT_NAME, OPSET, OUTPUT_NAME, image_batch_shape


def export_onnx(model: torch.nn.Module, path: Path, opset: int = OPSET, example: torch.Tensor = None) -> Path:
    """Export FP32 or eager-quantized INT8 `model` with the TorchScript exporter (the one that emits Q/DQ).

    `example` is one input batch (default: a CIFAR-sized image); the batch dimension is exported dynamic.
    """
    model = model.eval().cpu()
    example = torch.randn(image_batch_shape(1)) if example is None else example[:1].cpu()
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice is not actionable here
        torch.onnx.export(model, (example,), str(tmp), opset_version=opset, dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return Path(path)


def export_torchscript(model: torch.nn.Module, path: Path, example: torch.Tensor = None) -> torch.jit.ScriptModule:
    """Trace `model` to TorchScript, save it atomically, and return the traced module."""
    example = torch.randn(image_batch_shape(1)) if example is None else example[:1].cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.eval().cpu(), example)
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp))
    return traced
