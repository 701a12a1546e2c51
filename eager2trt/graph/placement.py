"""Fast mode: the Q/DQ placement TensorRT fuses best, and an explicit FP16 high precision.

Placement decisions are small graph queries (which Add input is the conv branch, which Q/DQ pairs feed an
INT8 operation, which nodes must stay FP32), kept apart from the rewrites that act on them. The rules are
TensorRT's (developer guide, "Explicit Quantization", Q/DQ layer placement: quantize the skip input of a
residual Add, not the conv output feeding it, so Conv + Add + ReLU fuse into one INT8 kernel), the same
ones NVIDIA ModelOpt's ONNX PTQ applies (`build_non_residual_input_map`, `remove_partial_input_qdq`).
Unlike the exact rewrites these change the arithmetic (fewer rounding steps), so fast mode is verified by
accuracy, not bit-exactness.
"""

from collections import Counter, deque
from typing import Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import PipelineError
from .ops import FUSABLE_BRANCH_OPS, INT8_INPUTS, LOOK_THROUGH
from .surgery import REWRITES, int8_zero_points, make_tensorrt_ready

HIGH_PRECISIONS = ("fp32", "fp16")
FP16_MAX = float(np.finfo(np.float16).max)
FP16_SCALE_RTOL = 2.0 ** -10  # a scale must round to FP16 within FP16's own precision (normal range)
QDQ_OPSET_FP16 = 19  # QuantizeLinear/DequantizeLinear-19 accept float16 scales
INT8_MAX = 127


# ---------------------------------------------------------------- queries (no edits)

def producer(t) -> Optional[gs.Node]:
    """The node that computes tensor `t`, or None for graph inputs and constants."""
    return t.inputs[0] if isinstance(t, gs.Variable) and t.inputs else None


def qdq_pair(t) -> Optional[tuple[gs.Node, gs.Node]]:
    """(QuantizeLinear, DequantizeLinear) when `t` is a DQ output fed directly by a Q of an activation, else None."""
    dq = producer(t)
    if dq is None or dq.op != "DequantizeLinear":
        return None
    q = producer(dq.inputs[0])
    return (q, dq) if q is not None and q.op == "QuantizeLinear" and isinstance(q.inputs[0], gs.Variable) else None


def ancestor_distances(t) -> dict[int, int]:
    """Hops from tensor `t` back to every ancestor node (shortest path, breadth first), keyed by id(node)."""
    dist, queue = {}, deque([(t, 0)])
    while queue:
        tensor, d = queue.popleft()
        node = producer(tensor)
        if node is None or id(node) in dist:
            continue
        dist[id(node)] = d + 1
        queue.extend((x, d + 1) for x in node.inputs if isinstance(x, gs.Variable))
    return dist


def conv_branch_input(add: gs.Node) -> Optional[int]:
    """Index of the Add input on the longer path back to the nearest common ancestor: the conv branch.

    The skip is the shorter path (the block input itself, or a downsample conv); None when the two paths
    are equally long or share no ancestor, so nothing is guessed.
    """
    if len(add.inputs) != 2 or not all(isinstance(t, gs.Variable) for t in add.inputs):
        return None
    da, db = (ancestor_distances(t) for t in add.inputs)
    common = da.keys() & db.keys()
    if not common:
        return None
    nearest = min(common, key=lambda k: (da[k] + db[k], max(da[k], db[k])))
    if da[nearest] == db[nearest]:
        return None
    return 0 if da[nearest] > db[nearest] else 1


def quantized_residual_adds(graph: gs.Graph) -> list[gs.Node]:
    """Adds whose two inputs both arrive through a Q/DQ pair."""
    return [n for n in graph.nodes if n.op == "Add" and len(n.inputs) == 2 and all(qdq_pair(t) for t in n.inputs)]


def residual_qdq_to_remove(graph: gs.Graph) -> list[tuple[gs.Node, int]]:
    """(Add, input index) for each quantized residual Add whose conv branch is Conv -> Q -> DQ -> Add."""
    plan = []
    for add in quantized_residual_adds(graph):
        i = conv_branch_input(add)
        if i is None:
            continue
        q, _ = qdq_pair(add.inputs[i])
        branch = producer(q.inputs[0])
        if branch is not None and branch.op in FUSABLE_BRANCH_OPS:
            plan.append((add, i))
    return plan


def is_fusable_skip(add: gs.Node, t) -> bool:
    """True when `t` is the skip input of an Add whose other input comes straight from a Conv."""
    others = [x for x in add.inputs if x is not t]
    return add.op == "Add" and len(others) == 1 and getattr(producer(others[0]), "op", None) in FUSABLE_BRANCH_OPS


def feeds_int8_op(t) -> bool:
    """True when tensor `t` reaches an INT8 input (Conv/Gemm/MatMul, pooling, a fusable residual skip),
    looking through Relu, Flatten, Reshape and Concat."""
    seen, stack = set(), [t]
    while stack:
        tensor = stack.pop()
        for node in tensor.outputs:
            slots = [i for i, x in enumerate(node.inputs) if x is tensor]
            if any(i in INT8_INPUTS.get(node.op, ()) for i in slots) or is_fusable_skip(node, tensor):
                return True
            if node.op in LOOK_THROUGH and slots and slots[0] == 0 and id(node) not in seen:
                seen.add(id(node))
                stack.extend(node.outputs)
    return False


def dangling_dequantizes(graph: gs.Graph) -> list[gs.Node]:
    """Activation DequantizeLinear nodes (fed by a Q) whose output feeds no INT8 operation."""
    return [n for n in graph.nodes if n.op == "DequantizeLinear" and qdq_pair(n.outputs[0]) is not None
            and not feeds_int8_op(n.outputs[0])]


def _fits_fp16(values: np.ndarray, is_scale: bool) -> bool:
    a = np.abs(values.astype(np.float64))
    if a.size and a.max() > FP16_MAX:
        return False
    if is_scale:  # a scale scales every value through it, so it must keep FP16's relative precision
        nz = a[a > 0]
        return bool(np.all(np.abs(nz.astype(np.float16).astype(np.float64) - nz) <= FP16_SCALE_RTOL * nz))
    return True


def fp32_nodes(graph: gs.Graph) -> dict[int, str]:
    """Nodes that must stay FP32, keyed by id(node), with the reason: a float constant beyond FP16's range
    (or a scale it cannot represent), or a calibrated activation range that overflows FP16 (the Q, the node
    computing its input, its DQs and their consumers)."""
    keep = {}
    for n in graph.nodes:
        for i, t in enumerate(n.inputs):
            if isinstance(t, gs.Constant) and t.values.dtype == np.float32 and \
                    not _fits_fp16(t.values, is_scale=n.op in ("QuantizeLinear", "DequantizeLinear") and i == 1):
                keep[id(n)] = f"{n.name or n.op} ({n.op}): constant {t.name} exceeds FP16"
        if n.op == "QuantizeLinear" and isinstance(n.inputs[1], gs.Constant):
            limit = float(np.abs(n.inputs[1].values).max()) * INT8_MAX
            if limit > FP16_MAX:
                reason = f"{n.name or n.op} (QuantizeLinear): calibrated range {limit:.4g} overflows FP16"
                group = [n, producer(n.inputs[0])] + [dq for dq in n.outputs[0].outputs]
                group += [c for dq in n.outputs[0].outputs for c in dq.outputs[0].outputs]
                keep.update({id(m): reason for m in group if m is not None})
    return keep


# ---------------------------------------------------------------- rewrites (edits, each returns its count)

def _replace_uses(graph: gs.Graph, old: gs.Variable, new: gs.Variable) -> None:
    """Make every consumer of `old` (and the graph output slot, under its name) read `new` instead."""
    for node in list(old.outputs):
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
    if old in graph.outputs:
        name = old.name
        old.name = f"{name}_bypassed"
        new.name, new.dtype, new.shape = name, new.dtype or old.dtype, new.shape or old.shape
        graph.outputs[graph.outputs.index(old)] = new


def place_residual_qdq(graph: gs.Graph) -> int:
    """Let each quantized residual Add read its conv branch straight from the Conv (the skip keeps its Q/DQ)."""
    plan = residual_qdq_to_remove(graph)
    for add, i in plan:
        q, _ = qdq_pair(add.inputs[i])
        add.inputs[i] = q.inputs[0]  # the DQ stays for any other consumer; cleanup drops it if unused
    return len(plan)


def drop_dangling_qdq(graph: gs.Graph) -> int:
    """Remove Q/DQ pairs that feed no INT8 operation (e.g. after the last Gemm, before Flatten, Hardsigmoid)."""
    changed = 0
    for dq in dangling_dequantizes(graph):
        q, _ = qdq_pair(dq.outputs[0])
        x, y = q.inputs[0], dq.outputs[0]
        if not isinstance(x, gs.Variable) or (y in graph.outputs and (x in graph.inputs or x in graph.outputs)):
            continue  # keeping the pair is cheaper than renaming a graph input or a second output
        _replace_uses(graph, y, x)
        dq.outputs.clear()
        changed += 1
    return changed


# The placement rewrites run before the zero-point mapping: pairs they drop (e.g. MobileNetV3's Hardsigmoid,
# fixed uint8 zero point 0) are never asked to map to int8.
FAST_REWRITES = tuple(r for r in REWRITES if r is not int8_zero_points) + \
    (place_residual_qdq, drop_dangling_qdq, int8_zero_points)


def _cast(graph: gs.Graph, t: gs.Variable, dtype, name: str) -> gs.Variable:
    out = gs.Variable(name, dtype=dtype, shape=t.shape)
    graph.nodes.append(gs.Node("Cast", name=f"{name}_cast", attrs={"to": onnx.helper.np_dtype_to_tensor_dtype(
        np.dtype(dtype))}, inputs=[t], outputs=[out]))
    return out


def high_precision_fp16(graph: gs.Graph, keep: dict[int, str]) -> int:
    """Store float constants and compute in FP16 except the `keep` nodes; Cast where precisions meet and at
    the float32 graph input and output. Returns how many constants became FP16. Needs inferred dtypes."""
    originals, converted = list(graph.nodes), {}
    for n in originals:
        if id(n) in keep:
            continue
        for i, t in enumerate(n.inputs):
            if isinstance(t, gs.Constant) and t.values.dtype == np.float32:
                if t.name not in converted:
                    converted[t.name] = gs.Constant(f"{t.name}_fp16", t.values.astype(np.float16))
                n.inputs[i] = converted[t.name]
        for t in n.outputs:
            if t.dtype == np.float32:
                t.dtype = np.float16
    casts = {}
    for n in originals:
        want = np.float32 if id(n) in keep else np.float16
        for i, t in enumerate(n.inputs):
            if isinstance(t, gs.Variable) and t.dtype in (np.float16, np.float32) and t.dtype != want:
                key = (t.name, np.dtype(want).name)
                if key not in casts:
                    casts[key] = _cast(graph, t, want, f"{t.name}_{np.dtype(want).name}")
                n.inputs[i] = casts[key]
    for k, out in enumerate(list(graph.outputs)):
        if out.dtype == np.float16:  # the graph's users keep float32 logits
            half = gs.Variable(f"{out.name}_fp16", dtype=np.float16, shape=out.shape)
            src = producer(out)
            src.outputs[src.outputs.index(out)] = half
            out.dtype = np.float32
            graph.nodes.append(gs.Node("Cast", name=f"{out.name}_to_float32", attrs={"to": onnx.TensorProto.FLOAT},
                                       inputs=[half], outputs=[out]))
    return len(converted)


def to_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """The fast graph with FP16 high precision (opset 19), float32 input and output kept; and a report of
    the constants converted and the nodes kept FP32 (with why)."""
    try:
        model = onnx.version_converter.convert_version(model, max(QDQ_OPSET_FP16, _opset(model)))
    except Exception as exc:  # the converter raises plain RuntimeErrors for ops it has no adapter for
        raise PipelineError(f"cannot raise the graph to opset {QDQ_OPSET_FP16} for FP16 scales "
                            f"({str(exc).splitlines()[0][:120]}); use --high-precision fp32") from None
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    keep = fp32_nodes(graph)
    count = high_precision_fp16(graph, keep)
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    out.ir_version = max(model.ir_version, 9)  # opset 19 needs IR version 9
    try:
        onnx.checker.check_model(out, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise PipelineError(f"the FP16 graph fails onnx.checker ({str(exc).splitlines()[0][:160]}); "
                            f"use --high-precision fp32 and please report this model") from None
    return out, {"high_precision_fp16": count, "kept_fp32": sorted(set(keep.values()))}


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def make_fast(model: onnx.ModelProto, allow_fp32: bool = False) -> tuple[onnx.ModelProto, dict]:
    """Exact rewrites with the placement ones before the zero-point mapping; return the graph and its report."""
    return make_tensorrt_ready(model, allow_fp32=allow_fp32, rewrites=FAST_REWRITES)


def with_high_precision(fast: onnx.ModelProto, report: dict, high_precision: str) -> onnx.ModelProto:
    """`fast` in the requested high precision; records the FP16 count and the nodes kept FP32 in `report`."""
    if high_precision not in HIGH_PRECISIONS:
        raise PipelineError(f"unknown --high-precision {high_precision!r}; choose one of {', '.join(HIGH_PRECISIONS)}")
    report["high_precision"] = high_precision
    if high_precision == "fp32":
        return fast
    out, fp16 = to_fp16(fast)
    report["rewrites"]["high_precision_fp16"] = fp16["high_precision_fp16"]
    report["kept_fp32"] = fp16["kept_fp32"]
    report["ops_after"] = dict(Counter(n.op_type for n in out.graph.node))
    return out
