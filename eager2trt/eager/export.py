"""ONNX and TorchScript exports with a named input, a named output and a dynamic batch dimension."""

import io
import warnings
from pathlib import Path

import torch

from ..artifacts import save_onnx, write_bytes
from ..contract import INPUT_NAME, OPSET, OUTPUT_NAME, image_batch_shape


def _example(example) -> torch.Tensor:
    """One input for tracing: the first of `example`, or a CIFAR-sized image."""
    return torch.randn(image_batch_shape(1)) if example is None else example[:1].detach().cpu()


def export_onnx(model: torch.nn.Module, path: Path, opset: int = OPSET, example: torch.Tensor = None) -> Path:
    """Export FP32 or eager-quantized INT8 `model` with the TorchScript exporter (the one that emits Q/DQ);
    the file is written only once onnx.checker and onnxruntime accept it. The batch dimension is dynamic."""
    model = model.eval().cpu()
    example = _example(example)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice is not actionable here
        torch.onnx.export(model, (example,), buf, opset_version=opset, dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return save_onnx(buf.getvalue(), path)


def export_torchscript(model: torch.nn.Module, path: Path, example: torch.Tensor = None) -> torch.jit.ScriptModule:
    """Trace `model` to TorchScript, save it atomically, and return the traced module."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.eval().cpu(), _example(example))
        torch.jit.save(traced, buf)  # in memory: torch.jit.save aborts the process when the disk is full
    write_bytes(path, buf.getvalue())
    return traced
