"""TensorRT explicit-quantization lint: one function per rule, each returning findings.

Rules from the TensorRT 10/11 developer guide ("Explicit Quantization", "Q/DQ Layer-Placement")
and the ONNX-TensorRT operator notes: int8 Q/DQ with zero point 0; per-channel scales only on
constant weights along the output-channel axis; per-tensor activations; Q feeds DQ directly; integer
tensors reach compute ops only through DequantizeLinear; opset >= 13 (per-axis Q/DQ).
Performance rules (warnings for the exact graph, errors for fast mode), after TensorRT's Q/DQ
layer-placement recommendations and Q/DQ propagation rules: every residual Add fusable into its conv
(one input straight from a Conv, the skip through DequantizeLinear); no Q/DQ pair that feeds no INT8
operation; each Concat input that only the Concat reads quantized with the Concat output's scale (else
TensorRT requantizes it); no Q/DQ between a conv and the activation or max pool it would fuse with.
A prediction rule (always a warning) names the requantize layers that remain: a DQ whose values reach,
through data movement, Relu or max pooling, a Q with other qparams. They are written here on their own,
not imported from the rewriter they check (they read the same op table, ops.py).
Known limitations: shapes are not inferred, so per-channel counts are checked against constant
weights only; FP8/INT4 rules are out of scope; the unfused-elementwise figure is a prediction from the
graph's structure, not TensorRT's layer report.
"""

from dataclasses import asdict, dataclass, replace
from typing import Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .onnx_utils import fold_constant_inputs, qdq_nodes, zero_point
from .ops import (BINARY_ELEMENTWISE, COMMUTING_POOLS, COMPUTE_OPS, FUSABLE_ACTIVATIONS, INT8_INPUTS, LOOK_THROUGH,
                  SHAPE_READERS, data_inputs)

MIN_OPSET = 13
PERFORMANCE_LEVELS = ("warning", "error")


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


def _source_op(t):
    return t.inputs[0].op if isinstance(t, gs.Variable) and t.inputs else None


def _residual_adds(graph: gs.Graph) -> list:
    """Adds of two activations, at least one straight from a Conv or a DequantizeLinear (quantized residuals)."""
    return [n for n in graph.nodes if n.op == "Add" and len(n.inputs) == 2
            and all(isinstance(t, gs.Variable) and t.inputs for t in n.inputs)
            and any(_source_op(t) in ("Conv", "DequantizeLinear") for t in n.inputs)]


def _fusable(add: gs.Node) -> bool:
    return sorted(_source_op(t) for t in add.inputs) == ["Conv", "DequantizeLinear"]


def residual_add_fusable(graph: gs.Graph) -> list[Finding]:
    """Each residual Add has one input straight from a Conv and a DQ skip, so TensorRT fuses Conv+Add(+ReLU)."""
    return [Finding("residual-add-fusable", n.name, n.op,
                    f"inputs come from {' and '.join(str(_source_op(t)) for t in n.inputs)}: TensorRT runs it as "
                    f"a separate elementwise layer; feed the conv branch to the Add without Q/DQ")
            for n in _residual_adds(graph) if not _fusable(n)]


def _qparams(n: gs.Node) -> Optional[tuple]:
    scale, zp = n.inputs[1], zero_point(n)
    if not isinstance(scale, gs.Constant) or not (zp is None or isinstance(zp, gs.Constant)):
        return None
    return (np.asarray(scale.values, np.float32).tobytes(),
            None if zp is None else (zp.values.dtype.str, np.asarray(zp.values).tobytes()))


def _reaches_int8_input(t, origin: Optional[tuple] = None) -> bool:
    """True when `t` reaches an INT8 input or a fusable Add's skip, through Relu and data movement, and past a Q
    with the `origin` qparams (values kept on one int8 grid: TensorRT's DQ and Q cancel)."""
    stack, seen = [t], set()
    while stack:
        tensor = stack.pop()
        for n in tensor.outputs:
            slots = [i for i, x in enumerate(n.inputs) if x is tensor]
            if any(i in INT8_INPUTS.get(n.op, ()) for i in slots) or (n.op == "Add" and _fusable(n)):
                return True
            if id(n) in seen:
                continue
            seen.add(id(n))
            if n.op in LOOK_THROUGH and set(slots) & set(data_inputs(n.op, len(n.inputs))):
                stack.extend(n.outputs)
            elif n.op == "QuantizeLinear" and origin is not None and _qparams(n) == origin:
                stack.extend(c.outputs[0] for c in n.outputs[0].outputs if c.op == "DequantizeLinear")
    return False


def _activation_pairs(graph: gs.Graph) -> list:
    """DequantizeLinear nodes fed by a QuantizeLinear of an activation (not a weight quantized in-graph)."""
    return [n for n in graph.nodes if n.op == "DequantizeLinear" and _source_op(n.inputs[0]) == "QuantizeLinear"
            and isinstance(n.inputs[0].inputs[0].inputs[0], gs.Variable)]


def no_dangling_qdq(graph: gs.Graph) -> list[Finding]:
    """Every activation Q/DQ pair feeds an INT8 operation, or quantizes a tensor an INT8 consumer needs anyway;
    others only add rounding and kernels. A DQ read only for its shape is dangling."""
    pairs = _activation_pairs(graph)
    reach = {id(n): _reaches_int8_input(n.outputs[0], _qparams(n)) for n in pairs}
    key = {id(n): (id(n.inputs[0].inputs[0].inputs[0]), _qparams(n.inputs[0].inputs[0])) for n in pairs}
    needed = {key[id(n)] for n in pairs if reach[id(n)]}
    shape_only = {id(n) for n in pairs if all(c.op in SHAPE_READERS for c in n.outputs[0].outputs)}
    return [Finding("no-dangling-qdq", n.name, n.op, "feeds " + (", ".join(sorted({c.op for c in n.outputs[0].outputs}))
                                                               or "the graph output") + ", no INT8 operation")
            for n in pairs if not reach[id(n)] and (id(n) in shape_only or key[id(n)] not in needed)]


def _output_qparams(node: gs.Node) -> Optional[tuple]:
    """The qparams every value consumer of `node`'s output re-quantizes with, or None."""
    consumers = [c for c in node.outputs[0].outputs if c.op not in SHAPE_READERS]
    if not consumers or any(c.op != "QuantizeLinear" for c in consumers):
        return None
    found = {_qparams(c) for c in consumers}
    return found.pop() if len(found) == 1 else None


def _exclusive_dq(t, consumer: gs.Node) -> Optional[gs.Node]:
    """The DQ of the Q/DQ pair `t` comes through, when both serve only `consumer`."""
    dq = t.inputs[0] if isinstance(t, gs.Variable) and t.inputs else None
    if dq is None or dq.op != "DequantizeLinear" or _source_op(dq.inputs[0]) != "QuantizeLinear":
        return None
    q = dq.inputs[0].inputs[0]
    return dq if list(q.outputs[0].outputs) == [dq] and all(c is consumer for c in dq.outputs[0].outputs) else None


def concat_inputs_share_scale(graph: gs.Graph) -> list[Finding]:
    """Each Concat input that only the Concat reads is quantized with the Concat output's qparams, so TensorRT's
    DQ and Q around the concat cancel instead of becoming a requantize layer per input."""
    out = []
    for n in (n for n in graph.nodes if n.op == "Concat"):
        target = _output_qparams(n)
        if target is None:
            continue
        for t in n.inputs:
            dq = _exclusive_dq(t, n)
            if dq is not None and _qparams(dq) != target:
                out.append(Finding("concat-shares-scale", n.name, n.op, f"input {t.name} is quantized at another "
                                   f"scale than the output: TensorRT requantizes it; give it the output's scale"))
    return out


def _conv_output(t) -> bool:
    """Whether `t` is a conv output, directly or through the activation fused with it."""
    op = _source_op(t)
    return op in COMPUTE_OPS or (op in FUSABLE_ACTIVATIONS and _source_op(t.inputs[0].inputs[0]) in COMPUTE_OPS)


def activation_fusable(graph: gs.Graph) -> list[Finding]:
    """No Q/DQ between a conv and the activation after it: TensorRT fuses Conv + activation, and a pair between
    forces an INT8 conv output and a separate activation layer (placement recommendation: do not quantize the
    outputs of weighted operations)."""
    out = []
    for n in (n for n in graph.nodes if n.op in FUSABLE_ACTIVATIONS):
        dq = n.inputs[0].inputs[0] if isinstance(n.inputs[0], gs.Variable) and n.inputs[0].inputs else None
        if dq is not None and dq.op == "DequantizeLinear" and _source_op(dq.inputs[0]) == "QuantizeLinear" \
                and _source_op(dq.inputs[0].inputs[0].inputs[0]) in COMPUTE_OPS:
            out.append(Finding("activation-fusable", n.name, n.op, "reads its conv through Q/DQ: TensorRT runs it "
                                                                   "as a separate layer; feed it the conv output"))
    return out


def maxpool_fusable(graph: gs.Graph) -> list[Finding]:
    """No Q/DQ between a conv (and its activation) and the max pool after it when the pool's output is
    re-quantized with the same qparams: the pair belongs after the pool (max commutes with the rounding), so
    Conv + activation + MaxPool can fuse (ModelOpt's Conv-Act-Pool partition)."""
    out = []
    for n in (n for n in graph.nodes if n.op in COMMUTING_POOLS):
        dq = _exclusive_dq(n.inputs[0], n)
        if dq is not None and _conv_output(dq.inputs[0].inputs[0].inputs[0]) and _output_qparams(n) == _qparams(dq):
            out.append(Finding("maxpool-fusable", n.name, n.op, "reads its conv through a Q/DQ pair that the Q after "
                                                                "the pool repeats: move the pair after the pool"))
    return out


def _dequantized_sources(t) -> list:
    """The DequantizeLinear nodes whose values reach `t` through Relu, data movement and max pooling."""
    found, stack, seen = [], [t], set()
    while stack:
        x = stack.pop()
        n = x.inputs[0] if isinstance(x, gs.Variable) and x.inputs else None
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        if n.op == "DequantizeLinear":
            found.append(n)
        elif n.op in LOOK_THROUGH + COMMUTING_POOLS:
            stack.extend(n.inputs[i] for i in data_inputs(n.op, len(n.inputs)))
    return found


def requantizing_layers(graph: gs.Graph) -> list[Finding]:
    """Prediction: each activation Q whose input carries values dequantized with other qparams (through copies,
    Relu or max pooling) becomes a TensorRT requantize layer, where DQ forward and Q backward propagation meet
    with two scales."""
    return [Finding("requantize", q.name, q.op, f"re-quantizes values dequantized by {dq.name} at another scale: "
                                                f"TensorRT runs a requantize layer", level="warning")
            for q in graph.nodes if q.op == "QuantizeLinear" and isinstance(q.inputs[0], gs.Variable)
            for dq in _dequantized_sources(q.inputs[0]) if _qparams(dq) != _qparams(q)]


def high_precision(graph: gs.Graph) -> str:
    """The float type of the Q/DQ scales, e.g. 'fp32', 'fp16', or 'fp16 (3 of 40 Q/DQ scales fp32)'."""
    kinds = [np.dtype(n.inputs[1].values.dtype) for n in qdq_nodes(graph) if isinstance(n.inputs[1], gs.Constant)]
    names = {np.dtype(np.float32): "fp32", np.dtype(np.float16): "fp16"}
    if not kinds:
        return "none (no Q/DQ)"
    n32 = sum(k == np.float32 for k in kinds)
    if n32 in (0, len(kinds)):
        return names.get(kinds[0], kinds[0].name)
    return f"fp16 ({n32} of {len(kinds)} Q/DQ scales fp32)"


def performance_summary(model: onnx.ModelProto) -> dict:
    """High-precision type, fusable residual Adds, and the elementwise layers TensorRT would leave unfused."""
    graph = gs.import_onnx(model)
    fold_constant_inputs(graph)
    adds = _residual_adds(graph)
    fusable = sum(_fusable(n) for n in adds)
    binary = [n for n in graph.nodes if n.op in BINARY_ELEMENTWISE and len(n.inputs) == 2
              and all(isinstance(t, gs.Variable) for t in n.inputs)]
    unfused = sum(not (n.op == "Add" and _fusable(n)) for n in binary)
    layers = {"unfused_elementwise": unfused, "requantize_layers": len(requantizing_layers(graph)),
              "unfused_activations": len(activation_fusable(graph)), "unfused_maxpools": len(maxpool_fusable(graph))}
    ops = [n.op for n in graph.nodes]
    return {"high_precision": high_precision(graph), "residual_adds": len(adds), "fusable_residual_adds": fusable,
            **layers, "predicted_unfused_layers": sum(layers.values()),
            "quantize_nodes": ops.count("QuantizeLinear"), "dequantize_nodes": ops.count("DequantizeLinear")}


def print_performance(summary: dict) -> None:
    print(f"  high precision (Q/DQ scale type, what non-INT8 layers run in under strong typing): "
          f"{summary['high_precision']}")
    print(f"  residual Adds fusable into their Conv (direct Conv input + DQ skip): "
          f"{summary['fusable_residual_adds']}/{summary['residual_adds']}")
    print(f"  predicted TensorRT elementwise layers left unfused: {summary['unfused_elementwise']}")
    print(f"  predicted requantize layers: {summary['requantize_layers']}; activations and max pools not fused "
          f"into their conv: {summary['unfused_activations']} and {summary['unfused_maxpools']}")


RULES = (opset_supports_qdq, zero_points_int8_zero, dequantize_inputs_int8, scales_per_channel_on_weights_only,
         quantize_feeds_dequantize, compute_inputs_float)
PERFORMANCE_RULES = (residual_add_fusable, no_dangling_qdq, concat_inputs_share_scale, activation_fusable,
                     maxpool_fusable)
PREDICTIONS = (requantizing_layers,)  # reported, always as warnings: what the graph's structure leaves to TensorRT


def lint(model: onnx.ModelProto, performance: Optional[str] = None) -> dict[str, list[Finding]]:
    """Run every rule, plus the performance rules at level `performance` ('warning' or 'error') if given;
    return findings keyed by rule function name (empty list = pass)."""
    if performance is not None and performance not in PERFORMANCE_LEVELS:
        raise ValueError(f"performance level {performance!r}; choose one of {PERFORMANCE_LEVELS}")
    graph = gs.import_onnx(model)
    fold_constant_inputs(graph)  # resolve Constant nodes into values, Q/DQ kept
    results = {rule.__name__: rule(graph) for rule in RULES}
    for rule in PERFORMANCE_RULES if performance else ():
        results[rule.__name__] = [replace(f, level=performance) for f in rule(graph)]
    for rule in PREDICTIONS if performance else ():
        results[rule.__name__] = rule(graph)
    return results


def passed(results: dict[str, list[Finding]]) -> bool:
    """True when no finding is an error (warnings allowed)."""
    return not any(f.level == "error" for findings in results.values() for f in findings)


def print_lint(results: dict[str, list[Finding]]) -> bool:
    """Print one line per rule and one per offending node; return True when no rule has an error."""
    for rule, findings in results.items():
        status = "PASS" if not findings else ("FAIL" if any(f.level == "error" for f in findings) else "WARN")
        print(f"  {status} {rule}")
        for f in findings[:10]:
            print(f"       {f.node} ({f.op}): {f.message}")
        if len(findings) > 10:
            print(f"       ... and {len(findings) - 10} more")
    return passed(results)


def as_json(results: dict[str, list[Finding]]) -> dict:
    return {rule: [asdict(f) for f in findings] for rule, findings in results.items()}
