"""ONNX and TorchScript exports with a named input, a named output and a dynamic batch dimension."""

import contextlib
import inspect
import io
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from ..artifacts import save_onnx, write_bytes
from ..contract import INPUT_NAME, OPSET, OUTPUT_NAME
from ..errors import PipelineError
from ..runtime.backends import is_quantized_module
from ..runtime.inputs import as_args, forward_names, output_names


def _example(example, names: list) -> tuple:
    """One sample for tracing, the first of `example` (a batch of one input, or a tuple or dict of several): its
    shape becomes the graph's fixed input size."""
    args = as_args(example, names if len(names) > 1 else ())
    if not all(isinstance(x, torch.Tensor) and x.dim() >= 2 for x in args):
        raise PipelineError(f"the export needs an example float NCHW (or NCL) batch of the model's input size, got "
                            f"{type(example).__name__} {tuple(getattr(example, 'shape', ()))}; pass example=a "
                            f"calibration batch")
    return tuple(x[:1].detach().cpu().float() for x in args)


def io_names(model: torch.nn.Module, example: tuple) -> tuple[list, list]:
    """The graph's input and output names: the reference's "input" and "output" for one of each; forward()'s
    parameter names for several inputs; a dict's keys, else output0, output1, ... for several outputs."""
    names = forward_names(model)
    inputs = names if len(example) > 1 and len(names) == len(example) else \
        [INPUT_NAME] if len(example) == 1 else [f"{INPUT_NAME}{i}" for i in range(len(example))]
    with torch.no_grad():
        out = model(*example)
    return inputs, output_names(out, OUTPUT_NAME)


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


def _quantized_relu6(g, self, inplace=None):
    """quantized::relu6 (nnq.ReLU6, which keeps its input's scale and zero point) as DequantizeLinear -> Clip(0, 6)
    -> QuantizeLinear with those: exact, since clipping at 0 and 6 then quantizing with the input's parameters
    clamps the input's integers at the zero point and at 6's quantized value, as the quantized kernel does."""
    from torch.onnx._internal.torchscript_exporter import symbolic_helper

    value, scale, zero_point, _ = symbolic_helper.dequantize_helper(g, self)
    low, high = (g.op("Constant", value_t=torch.tensor(v, dtype=torch.float)) for v in (0.0, 6.0))
    return symbolic_helper.quantize_helper(g, g.op("Clip", value, low, high), scale, zero_point)


def _copy_on_quantized(float_symbolic, quantized_symbolic=None):
    """A data-movement symbolic that also takes quantized tensors: dequantize, move (with `quantized_symbolic`,
    default `float_symbolic`), requantize with the input's scale and zero point (exact: moving values commutes with
    per-tensor quantization)."""
    def symbolic(g, self, *args):
        from torch.onnx._internal.torchscript_exporter import symbolic_helper

        if not symbolic_helper._is_tuple_construct(self):
            return float_symbolic(g, self, *args)
        value, scale, zero_point, _ = symbolic_helper.dequantize_helper(g, self)
        moved = (quantized_symbolic or float_symbolic)(g, value, *args)
        return symbolic_helper.quantize_helper(g, moved, scale, zero_point)
    return symbolic


def _squeeze(g, self, dim=None):
    """aten::squeeze of one dimension on a dequantized tensor: a Squeeze on it (the exporter's own writes an If, the
    shape of a quantized tensor being unknown to it, and no quantized symbolic after an If can read the result).
    Typed values squeezed by nothing at trace time stay as they are."""
    from torch.onnx._internal.torchscript_exporter import symbolic_helper

    before, after = (v.type().dim() if v.type().kind() == "TensorType" else None
                     for v in (g.original_node.inputsAt(0), g.original_node.output()))
    if before is not None and before == after:
        return self
    if dim is None or not symbolic_helper._is_constant(dim):
        return g.op("Squeeze", self)
    return symbolic_helper._squeeze_helper(g, self, [symbolic_helper._get_const(dim, "i", "dim")])


def _squeeze_with_dims(g, self, dim=None):
    """_squeeze, refusing `x.squeeze()` without a dim on a quantized tensor in one sentence: the exporter does not
    know a quantized tensor's shape, so it cannot tell which dimensions that drops (and the Linear after it is
    written as MatMul + Add with an int32 bias DequantizeLinear TensorRT rejects)."""
    if dim is None:
        path = _scope_path(g.original_node.scopeName())
        where = f"forward() of {path}" if path else "the model's forward()"
        raise PipelineError(f"{where} calls .squeeze() without a dimension on a quantized tensor, whose "
                            f"shape the ONNX exporter does not know; name the dimensions (x.squeeze(-1).squeeze(-1)) "
                            f"or use torch.flatten(x, 1)")
    return _squeeze(g, self, dim)


def _symbolics() -> dict:
    """Ours, by TorchScript op; float tensors keep the exporter's own symbolic (opset 11's pixel_shuffle and
    squeeze: the latest at or below OPSET)."""
    from torch.onnx._internal.torchscript_exporter import symbolic_opset11

    return {"prim::ConstantChunk": _quantized_chunk, "quantized::relu6": _quantized_relu6,
            "aten::pixel_shuffle": _copy_on_quantized(symbolic_opset11.pixel_shuffle),
            "aten::squeeze": _copy_on_quantized(symbolic_opset11.squeeze, _squeeze_with_dims)}


@contextlib.contextmanager
def _quantized_symbolics(opset: int):
    """Register the symbolics the TorchScript exporter lacks for quantized tensors for one export, then remove
    them (torch 2.x exports a quantized chunk as a float Slice, which the next quantized op cannot read; it has
    none for quantized::relu6 and writes pixel_shuffle and squeeze for float tensors only)."""
    symbolics = _symbolics()
    for name, fn in symbolics.items():
        torch.onnx.register_custom_op_symbolic(name, fn, opset)
    try:
        yield
    finally:
        for name in symbolics:
            torch.onnx.unregister_custom_op_symbolic(name, opset)


class _InputOnly(torch.nn.Module):
    """forward(*inputs) for a model whose forward takes more, optional, arguments (`forward(x, targets=None)`): the
    exporter would bind the defaults as graph inputs and fail on None. A dict of outputs becomes a tuple in the
    dict's order (the graph's outputs are named for its keys)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        out = self.model(*inputs)
        return tuple(out.values()) if isinstance(out, dict) else tuple(out) if isinstance(out, list) else out


def input_only(model: torch.nn.Module, example: tuple = ()) -> torch.nn.Module:
    """`model`, or `model` wrapped so that it takes its required inputs alone when forward's further parameters all
    have defaults (a required second input is a two-input model, which this wrapper would only hide), or so that a
    dict or list of outputs is returned as a tuple (what tracing and the exporter take)."""
    params = list(inspect.signature(model.forward).parameters.values())[len(forward_names(model)) or 1:]
    optional = params and all(p.default is not inspect.Parameter.empty for p in params)
    container = False
    if example and not optional:
        with torch.no_grad():
            container = isinstance(model(*example), (dict, list))
    return _InputOnly(model) if optional or container else model


@contextlib.contextmanager
def _output_kept_back():
    """Hold back what the exporter prints to the process's stdout and stderr (torch 2.x logs the whole TorchScript
    graph when an export fails: setup_onnx_logging leaves onnx logging on); it is printed only if the export works."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        held = {1: out, 2: err}
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        saved = {fd: os.dup(fd) for fd in held}
        for fd, f in held.items():
            os.dup2(f.fileno(), fd)
        ok = False
        try:
            yield
            ok = True
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            for fd, f in held.items() if ok else ():
                f.seek(0)
                os.write(fd, f.read())


def _scope_path(scope: str) -> str:
    """The module path in a TorchScript scope ("pkg.Model::/torch.nn.Sequential::b1/pkg.Conv::0" -> "b1.0")."""
    return ".".join(part.rsplit("::", 1)[-1] for part in scope.strip().split("/")[1:])


def _export_failure(exc: Exception, what: str) -> str:
    """One sentence for a failed ONNX export: the module path (from the node's scope), the operator and the fix."""
    text = str(exc)
    op = re.search(r"operator '([\w:.]+)'", text) or re.search(r"= (?:onnx|aten|quantized)::(\w+)", text)
    scope = re.search(r"scope: ([^#\n]+)", text)
    path = _scope_path(scope.group(1)) if scope else ""
    where = f" at {path or 'the model itself'}" if scope else ""
    kind = f" ({op.group(1)})" if op else ""
    fix = ("use a layer of the table in docs/bring_your_own_model.md, as a module (nn.GELU, not F.gelu), so the "
           "pipeline can keep it in float")
    if "to be a quantized tensor" in text:  # the float value came from an operation before this node
        return (f"the ONNX export of the {what} model fails{where}{kind}, which receives a float tensor where a "
                f"quantized one is expected: an operation before it has no quantized ONNX "
                f"form (a functional call such as F.gelu on a quantized tensor, or a conv's padding_mode other than "
                f"'zeros'); {fix}")
    return f"the ONNX export of the {what} model fails{where}{kind}: {text.strip().splitlines()[0][:160]}; {fix}"


def export_onnx(model: torch.nn.Module, path: Path, example: torch.Tensor, opset: int = OPSET) -> Path:
    """Export FP32 or eager-quantized INT8 `model` with the TorchScript exporter (the one that emits Q/DQ);
    the file is written only once onnx.checker and onnxruntime accept it. The batch dimension is dynamic, the
    image size is `example`'s (an NCHW batch)."""
    model = model.eval().cpu()
    example = _example(example, forward_names(model))
    inputs, outputs = io_names(model, example)
    model = input_only(model, example)
    buf = io.BytesIO()
    what = "INT8" if is_quantized_module(model) else "FP32"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice is not actionable here
        try:
            with _quantized_symbolics(opset), _output_kept_back():
                torch.onnx.export(model, example, buf, opset_version=opset, dynamo=False,
                                  input_names=inputs, output_names=outputs,
                                  dynamic_axes={n: {0: "batch"} for n in inputs + outputs})
        except PipelineError:  # a symbolic of ours refused, in its own sentence
            raise
        except Exception as exc:  # the exporter raises SymbolicValueError, UnsupportedOperatorError, RuntimeError...
            raise PipelineError(_export_failure(exc, what)) from None
    return save_onnx(buf.getvalue(), path)


def export_torchscript(model: torch.nn.Module, path: Path, example: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace `model` on `example` (an NCHW batch) to TorchScript, save it atomically, and return the traced module."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = model.eval().cpu()
            args = _example(example, forward_names(model))
            traced = torch.jit.trace(input_only(model, args), args)
        except Exception as exc:  # tracing raises RuntimeError, TypeError... for what it cannot record
            raise PipelineError(f"TorchScript cannot trace the INT8 model ({str(exc).strip().splitlines()[0][:160]});"
                                f" make forward() take the input tensor and return one tensor") from None
        torch.jit.save(traced, buf)  # in memory: torch.jit.save aborts the process when the disk is full
    write_bytes(path, buf.getvalue())
    return traced
