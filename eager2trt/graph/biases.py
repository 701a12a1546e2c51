"""The fast graph's biases in float: the FP32 model's own values instead of the INT8 export's rounded ones.

PyTorch's quantized convolution adds its bias in int32, rounded to the accumulator's step (input scale x weight
scale), and the exporter writes that rounded bias; the exact graph keeps it, bit for bit. TensorRT reads a
Conv's bias as a float constant, so the graph may as well carry the unrounded value. Where BatchNorm folding makes
depthwise weights large, that step is a visible share of the bias: on a CIFAR-10 MobileNetV2 (ImageNet stem) the
rounded biases alone took the exact graph from 0.61 to 0.40 top-1 (docs/accuracy.md). The FP32 values are
found by structure and value (graph/sensitivity.match_fp32_weights), never by name.
"""

import onnx
import onnx_graphsurgeon as gs

from .sensitivity import bias_key, match_fp32_weights, replace_bias, weight_dequantizers


def restore_float_biases(model: onnx.ModelProto, fp32: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """`model` with each Conv/Gemm bias constant replaced by its matched FP32 value; and how many were."""
    graph = gs.import_onnx(model)
    found, _ = match_fp32_weights(graph, fp32)
    changed = 0
    for dq in weight_dequantizers(graph):
        key = bias_key(dq.outputs[0].name)
        if key in found:
            changed += replace_bias(dq.outputs[0], found[key], f"{dq.outputs[0].name}_fp32_bias")
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    return out, changed
