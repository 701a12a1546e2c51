"""A Q/DQ ONNX graph run by PyTorch, on the GPU where there is one: the graph's own arithmetic at GPU speed.

onnx2torch turns the graph into a torch.fx module; it has no QuantizeLinear/DequantizeLinear, so they are added
here with onnxruntime's CPU arithmetic (what runtime.backends.OnnxRunner's "keep_qdq" mode runs, the check every
figure is proven by): Q = saturate(round_half_even(x / scale) + zero_point), DQ = (q - zero_point) * scale, both
in float32. A DequantizeLinear of constants (a weight) is folded first into a float32 initializer, value for
value what onnxruntime computes, because onnx2torch builds Conv and Gemm from initializers. TF32 is off while it
runs: float32 convolutions and products stay float32, as on the CPU.

What stays different is the order of float32 sums inside a convolution (cuDNN's vs MLAS's): a value that lands
within a rounding error of a quantization step's midpoint can round the other way. The pipeline therefore runs
the CPU graph beside this one on a sample of every run and holds the two together (check `gpu_vs_cpu`).
"""

import functools
from typing import Union

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from onnx import numpy_helper

from ..errors import PipelineError
from ..graph.onnx_utils import fold_constant_inputs, is_quantized
from .inputs import as_args, as_outputs


class QuantizeLinear(torch.nn.Module):
    """Per-tensor Q as onnxruntime computes it; the integer result is kept in float32 (exact below 2**24)."""

    def __init__(self, lo: int, hi: int):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x, scale, zero_point=None):
        q = torch.round(x / scale)
        if zero_point is not None:
            q = q + zero_point.to(q.dtype)
        return q.clamp_(self.lo, self.hi)


class DequantizeLinear(torch.nn.Module):
    """Per-tensor DQ of an activation (weights are folded beforehand, fold_constant_dequantize)."""

    def forward(self, q, scale, zero_point=None):
        q = q.to(scale.dtype)
        return (q - zero_point.to(scale.dtype) if zero_point is not None else q) * scale


_RANGES = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255)}


@functools.lru_cache(maxsize=None)
def _register() -> None:
    """Q and DQ in onnx2torch's registry, once per process (opsets 10 to 21: the same arithmetic)."""
    from onnx2torch.node_converters.registry import add_converter
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    def quantize(node, graph):
        zp = node.input_values[2] if len(node.input_values) > 2 else None
        dtype = graph.initializers[zp].proto.data_type if zp else onnx.TensorProto.UINT8
        return OperationConverterResult(torch_module=QuantizeLinear(*_RANGES[dtype]),
                                        onnx_mapping=onnx_mapping_from_node(node))

    def dequantize(node, graph):
        return OperationConverterResult(torch_module=DequantizeLinear(), onnx_mapping=onnx_mapping_from_node(node))

    for version in (10, 13, 19, 21):
        add_converter(operation_type="QuantizeLinear", version=version)(quantize)
        add_converter(operation_type="DequantizeLinear", version=version)(dequantize)


def fold_constant_dequantize(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose DequantizeLinear nodes on initializers (weights, biases) are float32 initializers,
    computed as onnxruntime does: (q - zero_point) * scale, per axis where the scale is a vector."""
    # the exporter's Constant nodes lowered to initializers and its ConstantOfShape/Cast chains (zero points)
    # folded by onnxruntime itself; Q/DQ are left for the loop below
    graph = gs.import_onnx(model)
    fold_constant_inputs(graph)
    model = gs.export_onnx(graph)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not all(n in inits for n in node.input if n):
            keep.append(node)
            continue
        q, scale, *zp = [numpy_helper.to_array(inits[n]) for n in node.input if n]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if scale.ndim:
            shape[axis % q.ndim] = -1
        q = q.astype(np.int32) - (zp[0].astype(np.int32).reshape(shape) if zp else 0)
        value = q.astype(np.float32) * scale.astype(np.float32).reshape(shape)
        graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
    del graph.node[:]
    graph.node.extend(keep)
    used = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def to_torch(model: onnx.ModelProto) -> torch.nn.Module:
    """The graph as a torch module (weights folded, Q/DQ as onnxruntime computes them); one sentence if an op has
    no PyTorch counterpart in onnx2torch."""
    try:
        from onnx2torch import convert
    except ImportError:
        raise PipelineError("running the graphs on the GPU needs onnx2torch; pip install onnx2torch (in "
                            "requirements.txt), or pass --device cpu") from None
    _register()
    try:
        return convert(fold_constant_dequantize(model)).eval()
    except (NotImplementedError, KeyError, ValueError, RuntimeError) as exc:
        raise PipelineError(f"the graph cannot run in PyTorch ({str(exc).splitlines()[0][:160]}); pass --device cpu "
                            f"(device='cpu') to evaluate it with onnxruntime") from None


class TorchGraphRunner:
    """An ONNX graph run by PyTorch on `device` (runtime.backends' runner interface: outputs(batch) -> arrays)."""

    name = "pytorch-graph"

    def __init__(self, model: onnx.ModelProto, device: Union[str, torch.device] = "cuda"):
        self.quantized = is_quantized(model)
        self.device = torch.device(device)
        self.module = to_torch(model).to(self.device)
        self.inputs = [i.name for i in model.graph.input]

    def default_batch(self) -> int:
        return 256

    def outputs(self, batch) -> list[np.ndarray]:
        args = [x.to(self.device, non_blocking=True) for x in as_args(batch, self.inputs)]
        with torch.no_grad(), no_tf32():
            return [o.float().cpu().numpy() for o in as_outputs(self.module(*args))]


class no_tf32:
    """float32 matrix products and convolutions in float32 (no TF32: cuDNN convolutions default to it) inside the
    block, as the CPU computes them; PyTorch's newer per-backend precision settings where it has them (mixing them
    with the legacy allow_tf32 flags is an error there)."""

    FLAGS = ((torch.backends.cudnn, "conv"), (torch.backends.cuda, "matmul"))

    def __enter__(self):
        if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
            self.saved = [(getattr(m, a), getattr(m, a).fp32_precision) for m, a in self.FLAGS]
            for target, _ in self.saved:
                target.fp32_precision = "ieee"
        else:
            self.saved = [(torch.backends.cuda.matmul, torch.backends.cuda.matmul.allow_tf32),
                          (torch.backends.cudnn, torch.backends.cudnn.allow_tf32)]
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc):
        for target, value in self.saved:
            setattr(target, "fp32_precision" if isinstance(value, str) else "allow_tf32", value)
