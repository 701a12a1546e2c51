"""ONNX and TorchScript exports with a named input, a named output and a dynamic batch dimension."""

import warnings
from pathlib import Path

import torch

from .artifacts import atomic_path

OPSET = 16
INPUT_NAME, OUTPUT_NAME = "input", "output"


def export_onnx(model: torch.nn.Module, path: Path, opset: int = OPSET) -> Path:
    """Export FP32 or eager-quantized INT8 `model` with the TorchScript exporter (the one that emits Q/DQ)."""
    model = model.eval().cpu()
    example = torch.randn(1, 3, 32, 32)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice is not actionable here
        torch.onnx.export(model, (example,), str(tmp), opset_version=opset, dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return Path(path)


def export_torchscript(model: torch.nn.Module, path: Path) -> torch.jit.ScriptModule:
    """Trace `model` to TorchScript, save it atomically, and return the traced module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.eval().cpu(), torch.randn(1, 3, 32, 32))
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp))
    return traced
