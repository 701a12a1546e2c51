"""One table of how TensorRT treats each ONNX op around Q/DQ; the rewriter (placement) and its checker (lint)
both read it, so they cannot disagree on a category (they keep their own traversals).

From the TensorRT 10/11 developer guide, "Explicit Quantization": "Q/DQ Layer-Placement Recommendations"
(quantize the inputs of weighted operations and the residual input of skip connections, do not quantize their
outputs, do not simulate BN/ReLU fusion) and "Q/DQ propagation" (Q nodes move backward and DQ nodes forward
across layers that commute with quantization, Q(op(x)) = op(Q(x)), e.g. max pooling and data movement; a
"quantizable" layer such as AveragePool instead fuses with its input DQ and output Q). And NVIDIA ModelOpt's
ONNX PTQ (`modelopt/onnx/op_types.get_copy_ops`: the copy ops it never quantizes; `quantization/partitioning`:
Conv + activation + MaxPool fused as one partition; `graph_utils.get_concat_eliminated_tensors`: the inputs and
output of a Concat share one scale so TensorRT's DQ-Q pairs around it cancel).
"""

# Ops TensorRT runs as INT8 kernels when a DequantizeLinear feeds them: op -> input indices that take activations.
INT8_INPUTS = {"Conv": (0,), "ConvTranspose": (0,), "Gemm": (0,), "MatMul": (0, 1), "MaxPool": (0,),
               "AveragePool": (0,), "GlobalAveragePool": (0,), "GlobalMaxPool": (0,)}
# Ops that compute with weights: their integer inputs may arrive only through DequantizeLinear.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Data movement: ops that only copy or select values, so they commute exactly with per-tensor quantization
# (Concat only when its inputs share one scale). ShuffleNet's channel shuffle is Reshape -> Transpose -> Reshape
# and its channel split a Slice.
DATA_MOVEMENT = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split", "Concat")
# Which inputs of a data-movement op carry the data (the others are shapes, starts, axes).
DATA_INPUTS = {"Concat": None}  # None: every input; ops not listed: input 0
# Pooling that commutes with quantization (a monotone rounding keeps the maximum): Q/DQ may move across it.
COMMUTING_POOLS = ("MaxPool", "GlobalMaxPool")
# Activations TensorRT fuses into the conv that feeds them (Conv + activation [+ output Q] in one kernel); a Q/DQ
# pair between the two forces an INT8 conv output and a separate activation layer.
FUSABLE_ACTIVATIONS = ("Relu", "HardSwish", "HardSigmoid", "Sigmoid", "Clip", "LeakyRelu")
# Ops that commute with per-tensor quantization (data movement, monotone): TensorRT moves Q/DQ across them, so a
# DequantizeLinear before one still feeds what follows.
LOOK_THROUGH = ("Relu",) + DATA_MOVEMENT
# Ops that read only a tensor's shape, never its values.
SHAPE_READERS = ("Shape", "Size")
# Two-input elementwise ops: TensorRT runs each as its own pointwise layer unless it fuses into a conv.
BINARY_ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow")
# Producers a residual Add can fuse with (Conv + Add + ReLU in one INT8 kernel).
FUSABLE_BRANCH_OPS = ("Conv",)
QDQ = ("QuantizeLinear", "DequantizeLinear")


def data_inputs(op: str, n_inputs: int) -> tuple:
    """Indices of the inputs of a data-movement op that carry data."""
    return tuple(range(n_inputs)) if DATA_INPUTS.get(op, (0,)) is None else DATA_INPUTS.get(op, (0,))
