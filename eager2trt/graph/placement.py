"""Fast mode: the Q/DQ placement TensorRT fuses best, and an explicit FP16 high precision.

Placement decisions are small graph queries (which Add input is the conv branch, which Q/DQ pairs feed an
INT8 operation, which nodes must stay FP32), kept apart from the rewrites that act on them. The rules are
TensorRT's (developer guide, "Explicit Quantization", Q/DQ layer placement: quantize the skip input of a
residual Add, not the conv output feeding it, so Conv + Add + ReLU fuse into one INT8 kernel), the same
ones NVIDIA ModelOpt's ONNX PTQ applies (`build_non_residual_input_map`, `remove_partial_input_qdq`). Beyond
residual Adds, after the guide's Q/DQ propagation rules (Q moves backward, DQ forward, across layers that commute
with quantization) and ModelOpt's copy-op, Conv-Act-Pool and concat-elimination rules: the Q/DQ the exporter puts
around each data-movement op is folded (exact), Concat inputs share the output's scale, a max pool reads its
conv's float output with the pair after it (exact), and a tensor quantized for one INT8 consumer is read through
DQ by the others too. The residual and dangling-pair rules change the arithmetic (fewer rounding steps), so fast
mode is verified by accuracy, not bit-exactness.
"""

from collections import Counter, deque
from typing import Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import PipelineError
from .onnx_utils import zero_point
from .ops import (COMMUTING_POOLS, DATA_MOVEMENT, FUSABLE_BRANCH_OPS, INT8_INPUTS, LOOK_THROUGH, SHAPE_READERS,
                  data_inputs)
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


def _from_conv(t) -> bool:
    """Whether `t` is Conv -> Q -> DQ (the Conv a residual Add can fuse with)."""
    return getattr(producer(qdq_pair(t)[0].inputs[0]), "op", None) in FUSABLE_BRANCH_OPS


def residual_qdq_to_remove(graph: gs.Graph) -> list[tuple[gs.Node, int]]:
    """(Add, input index) for each quantized residual Add whose conv branch is Conv -> Q -> DQ -> Add: the one
    input that comes from a Conv, or, when both do, the one on the longer path (conv_branch_input). An FPN's
    lateral Add reads a Conv and an up-sampled coarser level, whose path is longer but which no Conv produces."""
    plan = []
    for add in quantized_residual_adds(graph):
        convs = [i for i, t in enumerate(add.inputs) if _from_conv(t)]
        i = convs[0] if len(convs) == 1 else conv_branch_input(add) if convs else None
        if i is not None:
            plan.append((add, i))
    return plan


def is_fusable_skip(add: gs.Node, t) -> bool:
    """True when `t` is the skip input of an Add whose other input comes straight from a Conv."""
    others = [x for x in add.inputs if x is not t]
    return add.op == "Add" and len(others) == 1 and getattr(producer(others[0]), "op", None) in FUSABLE_BRANCH_OPS


def qparams(node: gs.Node) -> Optional[tuple]:
    """A Q/DQ node's (scale, zero point) as comparable bytes, or None when either is not a constant."""
    scale, zp = node.inputs[1], zero_point(node)
    if not isinstance(scale, gs.Constant) or not (zp is None or isinstance(zp, gs.Constant)):
        return None
    zp_key = None if zp is None else (np.asarray(zp.values).dtype.str, np.asarray(zp.values).tobytes())
    return np.asarray(scale.values, np.float32).tobytes(), zp_key


def feeds_int8_op(t, origin: Optional[tuple] = None) -> bool:
    """True when tensor `t` reaches an INT8 input (Conv/Gemm/MatMul, pooling, a fusable residual skip), looking
    through Relu and data movement; with `origin` (the qparams `t` was dequantized with), a QuantizeLinear with
    the same qparams continues the search past its DequantizeLinear: the values stay on one int8 grid there, so
    TensorRT's DQ and Q cancel (e.g. a Concat whose inputs share the output's scale)."""
    seen, stack = set(), [t]
    while stack:
        tensor = stack.pop()
        for node in tensor.outputs:
            slots = [i for i, x in enumerate(node.inputs) if x is tensor]
            if any(i in INT8_INPUTS.get(node.op, ()) for i in slots) or is_fusable_skip(node, tensor):
                return True
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op in LOOK_THROUGH and set(slots) & set(data_inputs(node.op, len(node.inputs))):
                stack.extend(node.outputs)
            elif node.op == "QuantizeLinear" and origin is not None and qparams(node) == origin:
                stack.extend(dq.outputs[0] for dq in node.outputs[0].outputs if dq.op == "DequantizeLinear")
    return False


def _quantized_tensor(q: gs.Node) -> tuple:
    """What a Q computes: its input tensor and its qparams (the exporter writes one Q per consumer)."""
    return id(q.inputs[0]), qparams(q)


def dangling_dequantizes(graph: gs.Graph) -> list[gs.Node]:
    """Activation DequantizeLinear nodes (fed by a Q) whose output feeds no INT8 operation, and whose tensor is
    not quantized for an INT8 consumer anyway: where one consumer needs the int8 tensor, the others read it
    through DQ too, so the producer writes int8 only (Conv + activation + Q in one kernel; e.g. the
    squeeze-excite Mul beside the pooling in MobileNetV3)."""
    pairs = [n for n in graph.nodes if n.op == "DequantizeLinear" and qdq_pair(n.outputs[0]) is not None]
    reaches = {id(dq): feeds_int8_op(dq.outputs[0], qparams(dq)) for dq in pairs}
    needed = {_quantized_tensor(qdq_pair(dq.outputs[0])[0]) for dq in pairs if reaches[id(dq)]}
    return [dq for dq in pairs if not reaches[id(dq)] and (_shape_only(dq) or
                                                           _quantized_tensor(qdq_pair(dq.outputs[0])[0]) not in needed)]


def _shape_only(dq: gs.Node) -> bool:
    """A DQ read only for its shape (ShuffleNet's view sizes): the float tensor has the same shape."""
    return all(c.op in SHAPE_READERS for c in dq.outputs[0].outputs)


def source_dequantize(t) -> Optional[gs.Node]:
    """The DequantizeLinear that tensor `t` comes from through single-input data movement (Reshape, Transpose,
    Slice, ...), or None."""
    node = producer(t)
    while node is not None and node.op in DATA_MOVEMENT and node.op != "Concat":
        node = producer(node.inputs[0])
    return node if node is not None and node.op == "DequantizeLinear" else None


def requantizations_after_data_movement(graph: gs.Graph) -> list[tuple]:
    """(tensor, Q): a data-movement output re-quantized with the qparams its input was dequantized with, every
    consumer of that Q a DequantizeLinear (the exporter's Q/DQ around each quantized view, transpose, chunk)."""
    plan = []
    for node in (n for n in graph.nodes if n.op in DATA_MOVEMENT and n.op != "Concat"):
        dq = source_dequantize(node.inputs[0])
        if dq is None or qparams(dq) is None:
            continue
        for out in node.outputs:
            for q in out.outputs:
                if q.op == "QuantizeLinear" and qparams(q) == qparams(dq) and q.outputs[0] not in graph.outputs \
                        and all(c.op == "DequantizeLinear" for c in q.outputs[0].outputs):
                    plan.append((out, q))
    return plan


def exclusive_pair(t, consumer: gs.Node) -> Optional[tuple[gs.Node, gs.Node]]:
    """The Q/DQ pair `t` comes through when both nodes serve only `consumer` (so editing them changes nothing else)."""
    pair = qdq_pair(t)
    if pair is None:
        return None
    q, dq = pair
    exclusive = list(q.outputs[0].outputs) == [dq] and all(c is consumer for c in dq.outputs[0].outputs)
    return pair if exclusive else None


def output_quantize(node: gs.Node) -> Optional[gs.Node]:
    """The QuantizeLinear every data consumer of `node`'s output shares qparams with (Shape readers aside), or None."""
    consumers = [c for c in node.outputs[0].outputs if c.op not in SHAPE_READERS]
    if not consumers or any(c.op != "QuantizeLinear" for c in consumers):
        return None
    first = qparams(consumers[0])
    return consumers[0] if first is not None and all(qparams(c) == first for c in consumers) else None


def concat_inputs_to_rescale(graph: gs.Graph) -> list[tuple[gs.Node, gs.Node, gs.Node]]:
    """(output Q, input Q, input DQ) for each Concat input quantized at another scale than the Concat's output,
    through a pair only that Concat reads."""
    plan = []
    for concat in (n for n in graph.nodes if n.op == "Concat"):
        out_q = output_quantize(concat)
        if out_q is None:
            continue
        for t in concat.inputs:
            pair = exclusive_pair(t, concat)
            if pair is not None and qparams(pair[1]) != qparams(out_q):
                plan.append((out_q, *pair))
    return plan


def maxpools_to_commute(graph: gs.Graph) -> list[gs.Node]:
    """Max pools fed through a pair only they read, whose output is re-quantized with the same qparams: the pair
    can move after the pool (max commutes with a monotone rounding), leaving Conv -> act -> MaxPool unbroken."""
    plan = []
    for pool in (n for n in graph.nodes if n.op in COMMUTING_POOLS):
        pair = exclusive_pair(pool.inputs[0], pool)
        out_q = output_quantize(pool)
        if pair is not None and out_q is not None and qparams(out_q) == qparams(pair[1]) \
                and pool.outputs[0] not in graph.outputs:
            plan.append(pool)
    return plan


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


def fold_qdq_after_data_movement(graph: gs.Graph) -> int:
    """Drop the Q/DQ that re-quantizes a data-movement output (Reshape, Transpose, Slice, ...) with the qparams
    its input was dequantized with: exact (moving int8 values keeps them on their grid); TensorRT then carries
    the DQ forward across the copy (ShuffleNet's channel shuffle and split)."""
    plan = requantizations_after_data_movement(graph)
    for out, q in plan:
        for dq in list(q.outputs[0].outputs):
            _replace_uses(graph, dq.outputs[0], out)
            dq.outputs.clear()
    return len(plan)


def commute_qdq_through_maxpool(graph: gs.Graph) -> int:
    """Let each max pool read the float tensor its exclusive Q/DQ pair quantized (the Q after the pool has the
    same qparams): exact, and Conv + activation + MaxPool can fuse (ModelOpt's Conv-Act-Pool partition)."""
    plan = maxpools_to_commute(graph)
    for pool in plan:
        q, _ = qdq_pair(pool.inputs[0])
        pool.inputs[0] = q.inputs[0]
    return len(plan)


def share_concat_scales(graph: gs.Graph) -> int:
    """Quantize each Concat input with the Concat output's scale and zero point (ModelOpt's concat elimination),
    so TensorRT's DQ-Q pairs around the concat cancel and it needs no requantization. Each input is then rounded
    once, on the output's grid, exactly as a float Concat followed by the output's Q (TensorRT's Q moved back
    across it), and clipped only where the output clips it."""
    plan = concat_inputs_to_rescale(graph)
    for out_q, q, dq in plan:
        for node in (q, dq):
            node.inputs[1] = out_q.inputs[1]
            node.inputs[2] = out_q.inputs[2]
    return len(plan)


# The placement rewrites run before the zero-point mapping: pairs they drop (e.g. MobileNetV3's Hardsigmoid,
# fixed uint8 zero point 0) are never asked to map to int8. Copies are folded and Concat scales shared before a
# max pool may take a Concat's output pair, and all before the dangling pairs are found, so the pairs kept on one
# int8 grid are kept.
FAST_REWRITES = tuple(r for r in REWRITES if r is not int8_zero_points) + \
    (place_residual_qdq, fold_qdq_after_data_movement, share_concat_scales, commute_qdq_through_maxpool,
     drop_dangling_qdq, int8_zero_points)


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
