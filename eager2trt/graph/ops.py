"""One table of how TensorRT treats each ONNX op around Q/DQ; the rewriter (placement) and its checker (lint)
both read it, so they cannot disagree on a category (they keep their own traversals).

From the TensorRT 10/11 developer guide, "Explicit Quantization" and "Q/DQ Layer-Placement
Recommendations", and NVIDIA ModelOpt's ONNX PTQ op lists (`modelopt/onnx/quantization/ort_patching` and
`graph_utils`: the ops it quantizes and the copy ops it looks through).
"""

# Ops TensorRT runs as INT8 kernels when a DequantizeLinear feeds them: op -> input indices that take activations.
INT8_INPUTS = {"Conv": (0,), "ConvTranspose": (0,), "Gemm": (0,), "MatMul": (0, 1), "MaxPool": (0,),
               "AveragePool": (0,), "GlobalAveragePool": (0,), "GlobalMaxPool": (0,)}
# Ops that compute with weights: their integer inputs may arrive only through DequantizeLinear.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops that commute with per-tensor quantization (data movement, monotone): TensorRT moves Q/DQ across them, so a
# DequantizeLinear before one still feeds what follows.
LOOK_THROUGH = ("Relu", "Flatten", "Reshape", "Concat")
# Two-input elementwise ops: TensorRT runs each as its own pointwise layer unless it fuses into a conv.
BINARY_ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow")
# Producers a residual Add can fuse with (Conv + Add + ReLU in one INT8 kernel).
FUSABLE_BRANCH_OPS = ("Conv",)
QDQ = ("QuantizeLinear", "DequantizeLinear")
