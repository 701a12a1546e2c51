"""The one table of what each layer a CNN deployer uses becomes on the way to TensorRT, beside graph/ops.py (the
ONNX side): quantized in INT8, or kept as a float island.

A float island is a leaf module PyTorch's eager mode cannot quantize into something the ONNX exporter writes as
Q/DQ (measured with torch 2.14: nnq.ELU and nnq.BatchNorm2d have no ONNX symbolic; GELU, SiLU and Mish have no
quantized kernel or symbolic; Sigmoid and Tanh run with torch.ao's fixed uint8 output range, which has no exact
int8 zero-point-0 form). Before prepare, `wrap_islands` puts each one between a DeQuantStub and a QuantStub (which
gets the activation observer), so the export reads DequantizeLinear -> op -> QuantizeLinear and TensorRT, whose
explicit quantization runs INT8 only where Q/DQ say so, runs the op in high precision. docs/bring_your_own_model.md
lists this table (tests/test_zoo.py keeps it in sync).
"""

from dataclasses import dataclass

from torch import nn
from torch.ao.nn.intrinsic import _FusedModule
from torch.ao.quantization import DeQuantStub, QuantStub

INT8, FLOAT = "INT8", "float island"


@dataclass(frozen=True)
class Layer:
    """One row: the PyTorch layer(s), how it is quantized, what TensorRT runs."""

    name: str
    types: tuple  # module classes; () for FloatFunctional methods and tensor ops
    precision: str  # INT8 or FLOAT
    tensorrt: str  # what the ONNX op becomes in TensorRT


LAYERS = (
    Layer("Conv1d, Conv2d (fused with BatchNorm and ReLU; padding_mode 'zeros')", (nn.Conv1d, nn.Conv2d), INT8,
          "Conv, per-channel int8 weights (axis 0), fused with its activation"),
    Layer("ConvTranspose1d, ConvTranspose2d", (nn.ConvTranspose1d, nn.ConvTranspose2d), INT8,
          "ConvTranspose, per-tensor int8 weights (eager prepare refuses per-channel ones); a float island when "
          "no quantized engine of this machine computes it as the Q/DQ graph does"),
    Layer("Linear", (nn.Linear,), INT8, "Gemm, per-channel int8 weights"),
    Layer("MaxPool, AvgPool, AdaptiveAvgPool", (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
                                                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d), INT8,
          "pooling on int8 (max pooling commutes with the Q/DQ around it)"),
    Layer("Upsample, F.interpolate (nearest, bilinear)", (nn.Upsample,), INT8, "Resize on the dequantized tensor"),
    Layer("PixelShuffle", (nn.PixelShuffle,), INT8, "DepthToSpace (data movement, exact)"),
    Layer("FloatFunctional add, cat, mul", (), INT8, "Add / Concat / Mul between Q/DQ pairs"),
    Layer("ReLU, ReLU6", (nn.ReLU, nn.ReLU6), INT8, "Relu, or Clip(0, 6), fused into the conv before it"),
    Layer("Hardswish, LeakyReLU", (nn.Hardswish, nn.LeakyReLU), INT8, "HardSwish / LeakyRelu, fused into the conv"),
    Layer("Flatten, squeeze, reshape, Dropout, Identity", (nn.Flatten, nn.Dropout, nn.Identity), INT8,
          "data movement (Dropout and Identity vanish)"),
    Layer("Hardsigmoid", (nn.Hardsigmoid,), INT8,
          "torch.ao's fixed uint8 range: the exact graph is refused, the fast graph keeps it in float"),
    Layer("ELU, GELU, SiLU, Mish", (nn.ELU, nn.GELU, nn.SiLU, nn.Mish), FLOAT,
          "DequantizeLinear -> op -> QuantizeLinear: the op in high precision"),
    Layer("Sigmoid, Tanh", (nn.Sigmoid, nn.Tanh), FLOAT,
          "DequantizeLinear -> op -> QuantizeLinear (a calibrated range instead of torch.ao's fixed one)"),
    Layer("BatchNorm1d, BatchNorm2d not fused into a conv", (nn.BatchNorm1d, nn.BatchNorm2d), FLOAT,
          "DequantizeLinear -> BatchNormalization -> QuantizeLinear (or fold it into the conv before it in "
          "fuse_model() where there is one)"),
    Layer("LayerNorm, GroupNorm, InstanceNorm", (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d),
          FLOAT, "DequantizeLinear -> normalization -> QuantizeLinear"),
)

ISLAND_TYPES = tuple(t for row in LAYERS if row.precision == FLOAT for t in row.types)
CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d)


def find_islands(model: nn.Module, extra: tuple = ()) -> list[str]:
    """Module paths of the leaf modules kept in float: the table's islands and any of the types `extra`; never a
    part of a fused module (QAT fusion keeps the BatchNorm inside ConvBn2d, which quantizes it with the conv)."""
    kinds = ISLAND_TYPES + tuple(extra)
    fused = [name for name, m in model.named_modules() if isinstance(m, _FusedModule)]
    return [name for name, m in model.named_modules() if name and type(m) in kinds and not list(m.children())
            and not any(name.startswith(f"{f}.") for f in fused)]


class FloatIsland(nn.Sequential):
    """DeQuantStub -> the float module -> QuantStub: the module runs in float between two Q/DQ pairs."""

    def __init__(self, module: nn.Module):
        module.qconfig = None  # not quantized: prepare must neither observe nor swap it
        super().__init__(DeQuantStub(), module, QuantStub())


def wrap_islands(model: nn.Module, paths: list[str]) -> nn.Module:
    """Replace each module at `paths` by its FloatIsland, in place (call it on a copy); returns `model`."""
    for path in paths:
        parent_name, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FloatIsland(getattr(parent, child)))
    return model


def has_conv_transpose(model: nn.Module) -> bool:
    """Whether `model` holds a ConvTranspose1d/2d (the engine probe must then cover it)."""
    return any(isinstance(m, CONV_TRANSPOSE) for m in model.modules())


def markdown_table() -> str:
    """The table as docs/bring_your_own_model.md shows it."""
    lines = ["| layer | precision | in TensorRT |", "|---|---|---|"]
    lines += [f"| {row.name} | {row.precision} | {row.tensorrt} |" for row in LAYERS]
    return "\n".join(lines)
