"""Q/DQ graph rewrites that make a PyTorch-exported INT8 ONNX model acceptable to TensorRT.

Each rewrite is one function that finds its pattern by graph structure (producers and consumers,
never node names), changes the graph in place and returns how many places it changed.
TensorRT's explicit-quantization rules behind them: symmetric int8 Q/DQ only (zero point 0), no
integer tensors other than Q outputs feeding DQ, and DQ inputs of activation types only.
(TensorRT 10 developer guide, "Working with Quantized Types"; ONNX QuantizeLinear/DequantizeLinear-13.)
"""

from typing import Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import PipelineError
from .onnx_utils import QDQ, fold_constant_inputs, op_counts, qdq_nodes, refuse_missing_zero_points, zero_point

# Ops whose bias may arrive as an int32 DequantizeLinear; input index 2 is the bias for both.
BIAS_CONSUMERS = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}  # op -> bias input index
ONNX_DTYPES = {np.dtype(np.uint8): onnx.TensorProto.UINT8, np.dtype(np.int8): onnx.TensorProto.INT8}


def _q_output_dtype(q: gs.Node) -> np.dtype:
    zp = zero_point(q)
    return np.dtype(zp.values.dtype) if isinstance(zp, gs.Constant) else np.dtype(np.uint8)


def remove_qdq_casts(graph: gs.Graph) -> int:
    """Remove Casts between QuantizeLinear and DequantizeLinear that only restate the Q output type."""
    changed = 0
    for cast in [n for n in graph.nodes if n.op == "Cast"]:
        src = cast.inputs[0]
        if len(src.inputs) != 1 or src.inputs[0].op != "QuantizeLinear":
            continue
        consumers = list(cast.outputs[0].outputs)
        if not consumers or any(c.op != "DequantizeLinear" for c in consumers):
            continue
        if ONNX_DTYPES.get(_q_output_dtype(src.inputs[0])) != cast.attrs.get("to"):
            continue  # a real type change: removing it would alter the model
        for dq in consumers:
            dq.inputs[0] = src
        cast.outputs.clear()
        changed += 1
    return changed


# torch.ao fixes the output quantization of Hardsigmoid/Sigmoid (MobileNetV3's squeeze-excite gate) at uint8 zero
# point 0, scale 1/256: [0, 255/256], which int8 with zero point 0 holds only up to 127/256. No exact rewrite
# exists; fast mode keeps these activations in float (placement.drop_dangling_qdq) before the mapping.
FIXED_QPARAMS_SCALES = (1.0 / 256.0, 2.0 / 256.0)
FIXED_QPARAMS = "fixed-qparams"
ASYMMETRIC = "asymmetric"


class ExactRefused(PipelineError):
    """The exact rewrite cannot map the graph to TensorRT's symmetric int8 without changing what it computes.

    `kind` is FIXED_QPARAMS (torch.ao's fixed uint8 zero point 0 activations: use the fast graph) or ASYMMETRIC
    (other non-symmetric zero points: re-quantize symmetrically); `nodes` names the Q/DQ nodes; str() is the
    one-sentence reason the pipeline records.
    """

    def __init__(self, kind: str, nodes: list[str], message: str):
        super().__init__(message)
        self.kind, self.nodes = kind, nodes


def _is_fixed_qparams(node: gs.Node) -> bool:
    zp, scale = zero_point(node), node.inputs[1]
    return isinstance(zp, gs.Constant) and zp.values.dtype == np.uint8 and not zp.values.any() \
        and isinstance(scale, gs.Constant) and np.asarray(scale.values).size == 1 \
        and any(np.isclose(float(np.asarray(scale.values)), s, rtol=1e-6) for s in FIXED_QPARAMS_SCALES)


def _refusal(nodes: list) -> ExactRefused:
    names = ", ".join(f"{n.name or '?'} ({n.op}, zero point {np.unique(zero_point(n).values)[:3].tolist()})"
                      if zero_point(n) is not None else f"{n.name or '?'} ({n.op}, zero point missing)"
                      for n in nodes[:5])
    more = f" and {len(nodes) - 5} more" if len(nodes) > 5 else ""
    if all(_is_fixed_qparams(n) for n in nodes):
        return ExactRefused(FIXED_QPARAMS, [n.name for n in nodes], (
            f"TensorRT supports symmetric quantization only, but {names}{more} carry torch.ao's fixed uint8 "
            f"quantization (zero point 0, scale 1/256: Hardsigmoid/Sigmoid outputs), which has no exact int8 "
            f"zero-point-0 form; the exact graph is refused, use the fast graph, which keeps these activations "
            f"in float"))
    return ExactRefused(ASYMMETRIC, [n.name for n in nodes], (
        f"TensorRT supports symmetric quantization only, but {names}{more} have zero points that cannot be "
        f"mapped exactly to int8 zero point 0; quantize activations with torch.per_tensor_symmetric (quint8 zero "
        f"point 128 or qint8 zero point 0)"))


def _unmappable(graph: gs.Graph) -> list:
    """Q/DQ nodes whose zero point has no exact int8 zero-point-0 form."""
    bad = []
    for node in qdq_nodes(graph):
        zp = zero_point(node)
        if not isinstance(zp, gs.Constant):
            bad.append(node) if zp is not None else None
            continue
        values = zp.values
        if values.dtype in (np.int8, np.int32) and not values.any():
            continue
        if values.dtype != np.uint8 or not (values == 128).all():
            bad.append(node)
    return bad


def exact_refusal(model: onnx.ModelProto) -> Optional[ExactRefused]:
    """Why the exact rewrite would refuse `model` (an ExactRefused, not raised), or None when it applies.
    Reads a copy: bias DQ are folded first, as make_tensorrt_ready does."""
    graph = gs.import_onnx(model)
    fold_constant_inputs(graph)
    fold_bias_dequantize(graph)
    graph.cleanup()
    bad = _unmappable(graph)
    return _refusal(bad) if bad else None


def int8_zero_points(graph: gs.Graph) -> int:
    """Map uint8 zero point 128 Q/DQ to int8 zero point 0 (exact: q_s8 = q_u8 - 128).

    Raises ExactRefused, naming the nodes, for any other non-zero zero point or a missing one.
    """
    bad = _unmappable(graph)
    if bad:
        raise _refusal(bad)
    replaced: dict[str, gs.Constant] = {}  # one int8 tensor per original zero point, so shared names stay unique
    changed = 0
    for node in qdq_nodes(graph):
        zp = zero_point(node)
        if not isinstance(zp, gs.Constant) or zp.values.dtype != np.uint8:
            continue  # already symmetric int8; int32 is a bias zero point, left to fold_bias_dequantize and lint
        if zp.name not in replaced:
            replaced[zp.name] = gs.Constant(f"{zp.name}_int8", np.zeros(zp.values.shape, dtype=np.int8))
        node.inputs[2] = replaced[zp.name]
        data = node.inputs[0]
        if node.op == "DequantizeLinear" and isinstance(data, gs.Constant):
            node.inputs[0] = gs.Constant(f"{data.name}_int8", (data.values.astype(np.int16) - 128).astype(np.int8))
        if node.op == "QuantizeLinear":
            node.outputs[0].dtype = np.int8
        changed += 1
    return changed


def fold_bias_dequantize(graph: gs.Graph) -> int:
    """Replace int32 bias DequantizeLinear on Conv/Gemm with the float32 constant it computes."""
    changed = 0
    for dq in [n for n in graph.nodes if n.op == "DequantizeLinear"]:
        data, scale = dq.inputs[0], dq.inputs[1]
        zp = zero_point(dq)
        if not (isinstance(data, gs.Constant) and data.values.dtype == np.int32 and isinstance(scale, gs.Constant)):
            continue
        out = dq.outputs[0]
        if not out.outputs or any(BIAS_CONSUMERS.get(c.op) != c.inputs.index(out) for c in out.outputs):
            continue
        offset = zp.values.astype(np.float64) if isinstance(zp, gs.Constant) else 0.0
        # float64 arithmetic, float32 storage: TensorRT warns on (and down-casts) float64 weights
        values = ((data.values.astype(np.float64) - offset) * scale.values.astype(np.float64)).astype(np.float32)
        dq.outputs.clear()
        out.to_constant(values)
        changed += 1
    return changed


# bias folding runs before the zero-point mapping: int32 bias zero points are not activation zero points
REWRITES = (fold_constant_inputs, remove_qdq_casts, fold_bias_dequantize, int8_zero_points)


def make_tensorrt_ready(model: onnx.ModelProto, allow_fp32: bool = False,
                        rewrites: tuple = REWRITES) -> tuple[onnx.ModelProto, dict]:
    """Apply `rewrites` in order (default: every exact one), clean up, sort and fully check the result; return it
    with a report."""
    refuse_missing_zero_points(model)  # before the rewrite: it would leave a graph the checker rejects
    graph = gs.import_onnx(model)
    before = op_counts(graph)
    if not any(op in before for op in QDQ) and not allow_fp32:
        raise PipelineError("the model has no QuantizeLinear/DequantizeLinear nodes: nothing to quantize; export "
                            "the INT8 model from resnet_torch.py, or pass --allow-fp32 to pass it through")
    counts = {}
    for rewrite in rewrites:
        counts[rewrite.__name__] = rewrite(graph)
        graph.cleanup()  # drop what the rewrite disconnected before the next one pattern-matches
    graph.toposort()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    try:
        onnx.checker.check_model(out, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise PipelineError(f"the rewritten graph fails onnx.checker ({str(exc).splitlines()[0][:160]}); "
                            f"please report this model") from None
    return out, {"rewrites": counts, "ops_before": dict(before), "ops_after": dict(op_counts(graph))}
