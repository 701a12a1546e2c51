"""TensorRT explicit-quantization lint: one function per rule, each returning findings.

Rules from the TensorRT 10/11 developer guide ("Explicit Quantization", "Q/DQ Layer-Placement")
and the ONNX-TensorRT operator notes: int8 Q/DQ with zero point 0; per-channel scales only on
constant weights along the output-channel axis; per-tensor activations; Q feeds DQ directly; integer
tensors reach compute ops only through DequantizeLinear; opset >= 13 (per-axis Q/DQ).
Known limitations: shapes are not inferred, so per-channel counts are checked against constant
weights only; FP8/INT4 rules are out of scope.
"""

from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .onnx_utils import fold_constant_inputs, qdq_nodes, zero_point

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
MIN_OPSET = 13


@dataclass
class Finding:
    rule: str
    node: str
    op: str
    message: str
    level: str = "error"


def opset_supports_qdq(graph: gs.Graph) -> list[Finding]:
    """Per-axis Q/DQ needs opset 13 or newer."""
    opset = graph.opset or 0
    return [] if opset >= MIN_OPSET else [Finding("opset", "-", "-", f"opset {opset} < {MIN_OPSET}")]


def zero_points_int8_zero(graph: gs.Graph) -> list[Finding]:
    """Every Q/DQ has an int8 zero point, all zeros (TensorRT: symmetric quantization only)."""
    out = []
    for n in qdq_nodes(graph):
        zp = zero_point(n)
        if not isinstance(zp, gs.Constant):
            out.append(Finding("int8-zero-point", n.name, n.op,
                               "zero point missing (ONNX then means uint8)" if zp is None else "zero point not constant"))
        elif zp.values.dtype != np.int8 or zp.values.any():
            out.append(Finding("int8-zero-point", n.name, n.op,
                               f"zero point {zp.values.dtype} {np.unique(zp.values)[:3].tolist()}, need int8 0"))
    return out


def dequantize_inputs_int8(graph: gs.Graph) -> list[Finding]:
    """Constant DequantizeLinear inputs are int8 (TensorRT rejects int32 bias DQ and uint8 data)."""
    return [Finding("int8-dq-input", n.name, n.op, f"input is {n.inputs[0].values.dtype}")
            for n in graph.nodes if n.op == "DequantizeLinear" and isinstance(n.inputs[0], gs.Constant)
            and n.inputs[0].values.dtype != np.int8]


def scales_per_channel_on_weights_only(graph: gs.Graph) -> list[Finding]:
    """Vector scales only on constant-weight DQ, axis 0, one per output channel; scalars elsewhere."""
    out = []
    for n in qdq_nodes(graph):
        scale, data = n.inputs[1], n.inputs[0]
        if not isinstance(scale, gs.Constant):
            out.append(Finding("scales", n.name, n.op, "scale is not a constant"))
            continue
        if scale.values.size == 1 and scale.values.ndim <= 1:
            continue
        axis = n.attrs.get("axis", 1)
        if not (n.op == "DequantizeLinear" and isinstance(data, gs.Constant)):
            out.append(Finding("scales", n.name, n.op, f"{scale.values.size} scales on an activation: "
                                                       f"activations must be per-tensor"))
        elif axis != 0 or data.values.shape[0] != scale.values.size:
            out.append(Finding("scales", n.name, n.op, f"axis {axis}, {scale.values.size} scales for weight shape "
                                                       f"{list(data.values.shape)}: need axis 0 and one per output channel"))
    return out


def quantize_feeds_dequantize(graph: gs.Graph) -> list[Finding]:
    """Nothing sits between a QuantizeLinear and its DequantizeLinear."""
    return [Finding("q-feeds-dq", n.name, n.op, f"output consumed by {c.op} {c.name}")
            for n in graph.nodes if n.op == "QuantizeLinear" for c in n.outputs[0].outputs
            if c.op != "DequantizeLinear"] + \
           [Finding("q-feeds-dq", n.name, n.op, "output is a graph output")
            for n in graph.nodes if n.op == "QuantizeLinear" and n.outputs[0] in graph.outputs]


def compute_inputs_float(graph: gs.Graph) -> list[Finding]:
    """Integer tensors reach Conv/Gemm/MatMul only through DequantizeLinear."""
    out = []
    for n in (n for n in graph.nodes if n.op in COMPUTE_OPS):
        for t in n.inputs:
            if isinstance(t, gs.Constant):
                if not np.issubdtype(t.values.dtype, np.floating):
                    out.append(Finding("float-compute-inputs", n.name, n.op, f"constant {t.name} is {t.values.dtype}"))
            elif t.inputs and t.inputs[0].op in ("QuantizeLinear", "Cast"):
                out.append(Finding("float-compute-inputs", n.name, n.op, f"input {t.name} comes from {t.inputs[0].op}"))
    return out


RULES = (opset_supports_qdq, zero_points_int8_zero, dequantize_inputs_int8, scales_per_channel_on_weights_only,
         quantize_feeds_dequantize, compute_inputs_float)


def lint(model: onnx.ModelProto) -> dict[str, list[Finding]]:
    """Run every rule; return findings keyed by rule function name (empty list = pass)."""
    graph = gs.import_onnx(model)
    fold_constant_inputs(graph)  # resolve Constant nodes into values, Q/DQ kept
    return {rule.__name__: rule(graph) for rule in RULES}


def print_lint(results: dict[str, list[Finding]]) -> bool:
    """Print one line per rule and one per offending node; return True when every rule passes."""
    for rule, findings in results.items():
        print(f"  {'PASS' if not findings else 'FAIL'} {rule}")
        for f in findings[:10]:
            print(f"       {f.node} ({f.op}): {f.message}")
        if len(findings) > 10:
            print(f"       ... and {len(findings) - 10} more")
    return not any(results.values())


def as_json(results: dict[str, list[Finding]]) -> dict:
    return {rule: [asdict(f) for f in findings] for rule, findings in results.items()}
