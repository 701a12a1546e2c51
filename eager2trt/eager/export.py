"""ONNX and TorchScript exports with a named input, a named output and a dynamic batch dimension."""

import contextlib
import io
import warnings
from pathlib import Path

import torch

from ..artifacts import save_onnx, write_bytes
from ..contract import INPUT_NAME, OPSET, OUTPUT_NAME
from ..errors import PipelineError


def _example(example: torch.Tensor) -> torch.Tensor:
    """One input for tracing, the first of `example`: its CHW becomes the graph's fixed image size."""
    if not isinstance(example, torch.Tensor) or example.dim() != 4:
        raise PipelineError(f"the export needs an example float NCHW batch of the model's input size, got "
                            f"{type(example).__name__} {tuple(getattr(example, 'shape', ()))}; pass example=a "
                            f"calibration batch")
    return example[:1].detach().cpu().float()


def _quantized_chunk(g, self, chunks: int, dim: int):
    """prim::ConstantChunk on a quantized tensor (ShuffleNetV2's channel split): dequantize, slice, requantize
    each chunk with the input's scale and zero point, as the exporter's own quantized ops do. Exact: a slice
    commutes with per-tensor quantization. Float inputs take the exporter's own symbolic."""
    from torch.onnx._internal.torchscript_exporter import symbolic_helper, symbolic_opset11

    if not symbolic_helper._is_tuple_construct(self):  # a float tensor
        return symbolic_opset11.prim_constant_chunk(g, self, chunks, dim)
    value, scale, zero_point, _ = symbolic_helper.dequantize_helper(g, self)
    return [symbolic_helper.quantize_helper(g, part, scale, zero_point)
            for part in symbolic_opset11.prim_constant_chunk(g, value, chunks, dim)]


@contextlib.contextmanager
def _quantized_symbolics(opset: int):
    """Register the symbolics the TorchScript exporter lacks for quantized tensors for one export, then remove
    them (torch 2.x exports a quantized chunk as a float Slice, which the next quantized op cannot read)."""
    torch.onnx.register_custom_op_symbolic("prim::ConstantChunk", _quantized_chunk, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("prim::ConstantChunk", opset)


def export_onnx(model: torch.nn.Module, path: Path, example: torch.Tensor, opset: int = OPSET) -> Path:
    """Export FP32 or eager-quantized INT8 `model` with the TorchScript exporter (the one that emits Q/DQ);
    the file is written only once onnx.checker and onnxruntime accept it. The batch dimension is dynamic, the
    image size is `example`'s (an NCHW batch)."""
    model = model.eval().cpu()
    example = _example(example)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice is not actionable here
        with _quantized_symbolics(opset):
            torch.onnx.export(model, (example,), buf, opset_version=opset, dynamo=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return save_onnx(buf.getvalue(), path)


def export_torchscript(model: torch.nn.Module, path: Path, example: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace `model` on `example` (an NCHW batch) to TorchScript, save it atomically, and return the traced module."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.eval().cpu(), _example(example))
        torch.jit.save(traced, buf)  # in memory: torch.jit.save aborts the process when the disk is full
    write_bytes(path, buf.getvalue())
    return traced
