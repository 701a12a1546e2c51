"""Per-layer INT8 sensitivity of a Q/DQ ONNX graph: which quantized layer loses the accuracy.

Works on the ONNX alone (a PyTorch export, the TensorRT-ready graph, or a user's own INT8 ONNX), in
onnxruntime with graph optimizations off, so the graph is measured as written. A "layer" is one place where
the graph quantizes, found by structure: an activation quantizer (a QuantizeLinear of a computed tensor whose
outputs all feed DequantizeLinear) or a weight dequantizer (a DequantizeLinear of a constant feeding the weight
of a Conv/Gemm/MatMul). For each, two variants of the graph run on the same input batches:
  (a) that layer alone in float (its Q/DQ bypassed, or its weight replaced by a float constant), all others
      quantized: the points it would recover if kept in high precision (onnxruntime's qdq_loss_debug and
      ModelOpt's per-node sensitivity measure the same leave-one-out effect);
  (b) that layer alone quantized, every other one in float: the points it loses on its own.
Float weights are the FP32 ONNX's (matched by op, shape and value, never by name) when one is given, else
the DequantizeLinear's own values (int8 * scale), which compute the same numbers as the quantized weight:
without the FP32 weights the weight quantization error cannot be measured, and the report says so.

Known limitations: interactions between layers are not measured (the loss may be spread over many layers,
as on MobileNetV2); one evaluation per variant, so the cost is 2 x layers x images.
"""

import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from tqdm import tqdm

from ..runtime.backends import graph_runner, ort_session
from ..errors import PipelineError
from .onnx_utils import fold_constant_inputs, is_quantized, zero_point
from .placement import _replace_uses, producer
from .surgery import fold_bias_dequantize, make_tensorrt_ready, remove_qdq_casts

# The exact rewrites that make quantizers visible as patterns (constants folded, Casts between Q and DQ gone, int32
# biases folded to float) without requiring symmetric zero points, so any Q/DQ graph can be analysed.
ANALYSIS_REWRITES = (fold_constant_inputs, remove_qdq_casts, fold_bias_dequantize)
KINDS = ("activation", "weight")
WEIGHT_SLOTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (1,), "MatMul": (0, 1)}
BIAS_SLOT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}
# An FP32 weight belongs to a quantized one when it rounds to it: within half a quantization step per element
# (per-channel symmetric max scaling never clips), with room for the float error of BatchNorm folding.
MATCH_STEPS = 0.51


# ---------------------------------------------------------------- the layers (queries, no edits)

@dataclass(frozen=True)
class Layer:
    """One quantized place: `key` is the tensor that identifies it in every copy of the graph (the Q output of an
    activation, the DQ output of a weight); `name` is for people; `op` is what it quantizes for."""

    key: str
    kind: str
    name: str
    op: str
    index: int

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"


def activation_quantizers(graph: gs.Graph) -> list[gs.Node]:
    """QuantizeLinear nodes of computed tensors (or the graph input) whose outputs all feed DequantizeLinear."""
    return [n for n in graph.nodes if n.op == "QuantizeLinear" and isinstance(n.inputs[0], gs.Variable)
            and n.outputs[0].outputs and all(c.op == "DequantizeLinear" for c in n.outputs[0].outputs)
            and n.outputs[0] not in graph.outputs]


def _constant_source(dq: gs.Node) -> Optional[gs.Constant]:
    """The constant a weight DQ dequantizes: its integer input, or the float input of a Q feeding it."""
    data = dq.inputs[0]
    if isinstance(data, gs.Constant):
        return data
    q = producer(data)
    return q.inputs[0] if q is not None and q.op == "QuantizeLinear" and isinstance(q.inputs[0], gs.Constant) else None


def weight_dequantizers(graph: gs.Graph) -> list[gs.Node]:
    """DequantizeLinear nodes of constants whose every consumer reads them as a Conv/Gemm/MatMul weight."""
    def feeds_weight(t) -> bool:
        uses = [(c, i) for c in t.outputs for i, x in enumerate(c.inputs) if x is t]
        return bool(uses) and all(i in WEIGHT_SLOTS.get(c.op, ()) for c, i in uses)

    return [n for n in graph.nodes if n.op == "DequantizeLinear" and _constant_source(n) is not None
            and feeds_weight(n.outputs[0])]


def find_layers(graph: gs.Graph) -> list[Layer]:
    """Every quantized layer of `graph`, activations and weights, in the order the graph computes them."""
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    layers = []
    for q in activation_quantizers(graph):
        src = producer(q.inputs[0])
        feeds = sorted({c.op for dq in q.outputs[0].outputs for c in dq.outputs[0].outputs}) or ["output"]
        op = f"{src.op if src is not None else 'input'} -> {'/'.join(feeds)}"
        layers.append(Layer(q.outputs[0].name, "activation", q.name or q.inputs[0].name, op, position[id(q)]))
    for dq in weight_dequantizers(graph):
        consumer = min(dq.outputs[0].outputs, key=lambda c: position[id(c)])
        layers.append(Layer(dq.outputs[0].name, "weight", consumer.name or dq.outputs[0].name, consumer.op,
                            position[id(consumer)]))
    return sorted(layers, key=lambda u: (u.index, u.kind))


def dequantized(dq: gs.Node) -> np.ndarray:
    """The float weight a weight DQ stands for: a Q's float input, else (int - zero point) * scale in float32,
    which is what DequantizeLinear computes."""
    data = dq.inputs[0]
    if not isinstance(data, gs.Constant):
        return np.asarray(_constant_source(dq).values, dtype=np.float32)
    scale = np.asarray(dq.inputs[1].values, dtype=np.float32)
    zp = zero_point(dq)
    offset = np.asarray(zp.values, dtype=np.float32) if isinstance(zp, gs.Constant) else np.float32(0)
    if scale.size > 1:  # per-channel along `axis` (DequantizeLinear-13 default 1)
        shape = [1] * data.values.ndim
        shape[dq.attrs.get("axis", 1)] = -1
        scale, offset = scale.reshape(shape), np.broadcast_to(offset, scale.shape).reshape(shape)
    return ((data.values.astype(np.float32) - offset) * scale).astype(np.float32)


def _step(dq: gs.Node, like: np.ndarray) -> np.ndarray:
    """The quantization step of each weight element (the scale broadcast along the DQ's axis)."""
    scale = np.abs(np.asarray(dq.inputs[1].values, dtype=np.float32))
    if scale.size > 1:
        shape = [1] * like.ndim
        shape[dq.attrs.get("axis", 1)] = -1
        scale = scale.reshape(shape)
    return np.broadcast_to(scale, like.shape)


def bias_key(weight_key: str) -> str:
    """The key under which a weight layer's float bias is kept beside its float weight."""
    return weight_key + ":bias"


def match_fp32_weights(graph: gs.Graph, fp32: onnx.ModelProto) -> tuple[dict[str, np.ndarray], list[str]]:
    """Float weights of the FP32 ONNX for each weight DQ of `graph`, matched by consumer op, shape and value
    (within half a quantization step of the dequantized weight), each FP32 weight used once, with the matched
    node's float bias under bias_key(); and the names of the weight layers left without a match.

    The bias matters as much as the weight: the INT8 export's bias is the float bias rounded to the int32 step
    input scale x weight scale, which on depthwise convolutions with large folded weights is a visible share of
    the bias (measured: up to 19% on a MobileNetV2, and 23 points of accuracy with every layer otherwise in float),
    so a layer kept in float gets both back."""
    fp = gs.import_onnx(fp32)
    fold_constant_inputs(fp)  # Constant nodes become values
    candidates = [(n, n.inputs[i]) for n in fp.nodes for i in WEIGHT_SLOTS.get(n.op, ())
                  if i < len(n.inputs) and isinstance(n.inputs[i], gs.Constant)]
    used, found, missing = set(), {}, []
    for dq in weight_dequantizers(graph):
        ref = dequantized(dq)
        tol = MATCH_STEPS * _step(dq, ref) + 1e-7
        ops = {c.op for c in dq.outputs[0].outputs}
        for k, (node, t) in enumerate(candidates):
            if k in used or node.op not in ops or t.values.shape != ref.shape:
                continue
            values = np.asarray(t.values, dtype=np.float32)
            if np.all(np.abs(values - ref) <= tol):
                used.add(k)
                found[dq.outputs[0].name] = values
                if node.op in BIAS_SLOT and len(node.inputs) > BIAS_SLOT[node.op] and isinstance(
                        node.inputs[BIAS_SLOT[node.op]], gs.Constant):
                    found[bias_key(dq.outputs[0].name)] = np.asarray(node.inputs[BIAS_SLOT[node.op]].values,
                                                                     dtype=np.float32)
                break
        else:
            missing.append(dq.outputs[0].outputs[0].name or dq.outputs[0].name)
    return found, missing


# ---------------------------------------------------------------- rewrites (edits, each returns its count)

def bypass_activation_qdq(graph: gs.Graph, keys: set) -> int:
    """Let every consumer of the activation quantizers named by `keys` (their Q output) read the float input."""
    changed = 0
    for q in activation_quantizers(graph):
        if q.outputs[0].name not in keys:
            continue
        for dq in list(q.outputs[0].outputs):
            _replace_uses(graph, dq.outputs[0], q.inputs[0])
            dq.outputs.clear()
        q.outputs.clear()
        changed += 1
    return changed


def replace_bias(weight: gs.Variable, bias: np.ndarray, name: str) -> int:
    """Give each Conv/Gemm reading `weight` the constant bias `bias` (in its current bias's dtype where that is a
    constant of the same shape); returns how many were replaced."""
    changed = 0
    for c in weight.outputs:
        slot = BIAS_SLOT.get(c.op)
        if slot is None or len(c.inputs) <= slot:
            continue
        old = c.inputs[slot]
        if isinstance(old, gs.Constant) and tuple(old.values.shape) != bias.shape:
            continue
        dtype = np.asarray(old.values).dtype if isinstance(old, gs.Constant) else bias.dtype
        c.inputs[slot] = gs.Constant(name, bias.astype(dtype))
        changed += 1
    return changed


def set_float_biases(graph: gs.Graph, found: dict[str, np.ndarray]) -> int:
    """Give every quantized Conv/Gemm the float bias kept in `found` under bias_key() of its weight DQ."""
    changed = 0
    for dq in weight_dequantizers(graph):
        key = bias_key(dq.outputs[0].name)
        if key in found:
            changed += replace_bias(dq.outputs[0], found[key], f"{dq.outputs[0].name}_fp32_bias")
    return changed


def restore_float_biases(model: onnx.ModelProto, fp32: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """`model` with each Conv/Gemm bias replaced by its matched FP32 value (and how many were): the graph
    TensorRT computes from a float bias, instead of the export's bias rounded to the int32 step.

    PyTorch's quantized convolution adds its bias in int32, rounded to input scale x weight scale, and the
    exporter writes that rounded bias; the exact graph keeps it, bit for bit. TensorRT reads a Conv's bias as a
    float constant, so the fast and fallback graphs carry the unrounded value. Where BatchNorm folding makes
    depthwise weights large, that step is a visible share of the bias: on a CIFAR-10 MobileNetV2 (ImageNet
    stem) the rounded biases alone took the exact graph from 0.61 to 0.40 top-1 (docs/accuracy.md)."""
    graph = gs.import_onnx(model)
    changed = set_float_biases(graph, match_fp32_weights(graph, fp32)[0])
    return _exported(graph, model), changed


def _exported(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """An edited copy of `like` back as a model: cleaned up, sorted, `like`'s IR version."""
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    out.ir_version = like.ir_version
    return out


def float_weights(graph: gs.Graph, values: dict[str, np.ndarray]) -> int:
    """Replace each weight DQ whose output is a key of `values` by that float constant, and its consumer's bias
    by the float bias kept under bias_key() where there is one."""
    changed = 0
    for dq in weight_dequantizers(graph):
        out = dq.outputs[0]
        if out.name in values:
            if bias_key(out.name) in values:
                replace_bias(out, values[bias_key(out.name)], f"{out.name}_float_bias")
            dq.outputs.clear()
            out.to_constant(values[out.name])
            changed += 1
    return changed


def with_float_layers(model: onnx.ModelProto, layers: Iterable[Layer],
                      weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` with `layers` in float (activation Q/DQ bypassed, weights from `weights`)."""
    layers = list(layers)
    graph = gs.import_onnx(model)  # a new graph: `model` itself is never edited
    acts = {u.key for u in layers if u.kind == "activation"}
    keys = [u.key for u in layers if u.kind == "weight"]
    wts = {k: weights[k] for k in keys}
    wts.update({bias_key(k): weights[bias_key(k)] for k in keys if bias_key(k) in weights})  # their biases too
    counts = bypass_activation_qdq(graph, acts), float_weights(graph, wts)
    if counts != (len(acts), len(keys)):
        raise PipelineError(f"only {counts[0]} of {len(acts)} activation and {counts[1]} of {len(keys)} weight layers "
                            f"were found in the graph; the layers do not belong to this model")
    return _exported(graph, model)


# ---------------------------------------------------------------- measuring

@dataclass(frozen=True)
class Measurement:
    """One graph on the evaluation batches. score: top-1 accuracy with labels, else top-1 agreement with the
    reference; error: mean absolute logit difference from the reference; agreement: top-1 agreement with it."""

    score: float
    error: float
    agreement: float
    accuracy: Optional[float] = None


class Evaluator:
    """Runs graphs on one fixed set of input batches and measures them against one reference's logits."""

    def __init__(self, batches: list[np.ndarray], labels: Optional[np.ndarray] = None, threads: int = 0,
                 device: str = "cpu"):
        if not batches:
            raise PipelineError("no evaluation batches were given; pass at least one float32 NCHW batch")
        self.batches = [np.ascontiguousarray(b, dtype=np.float32) for b in batches]
        self.labels = None if labels is None else np.asarray(labels)
        self.threads = threads
        self.device = device  # a GPU: each variant run by PyTorch with the CPU's Q/DQ arithmetic (graph_runner)
        self.images = sum(len(b) for b in self.batches)
        if self.labels is not None and len(self.labels) != self.images:
            raise PipelineError(f"{len(self.labels)} labels for {self.images} images; pass one label per image")
        self.reference: Optional[np.ndarray] = None
        self.runs = 0

    def logits(self, model: onnx.ModelProto) -> np.ndarray:
        self.runs += 1
        if self.device != "cpu":
            runner = graph_runner(model, self.device)
            return np.concatenate([runner.outputs(torch.from_numpy(b))[0] for b in self.batches]).astype(np.float64)
        session = ort_session(model, threads=self.threads)  # Q/DQ as written
        name = session.get_inputs()[0].name
        return np.concatenate([session.run(None, {name: b})[0] for b in self.batches]).astype(np.float64)

    def set_reference(self, model: onnx.ModelProto) -> Measurement:
        self.reference = self.logits(model)
        return self.measure_logits(self.reference)

    def measure_logits(self, logits: np.ndarray) -> Measurement:
        agreement = float((logits.argmax(1) == self.reference.argmax(1)).mean())
        accuracy = None if self.labels is None else float((logits.argmax(1) == self.labels).mean())
        return Measurement(score=agreement if accuracy is None else accuracy,
                           error=float(np.abs(logits - self.reference).mean()), agreement=agreement, accuracy=accuracy)

    def measure(self, model: onnx.ModelProto) -> Measurement:
        return self.measure_logits(self.logits(model))

    def metric(self) -> str:
        return (f"top-1 accuracy on {self.images} labelled images" if self.labels is not None
                else f"top-1 agreement with the reference on {self.images} unlabelled images")


@dataclass
class Study:
    """What every variant shares: the analysed graph, its layers, their float weights and the evaluator."""

    model: onnx.ModelProto
    layers: list[Layer]
    weights: dict[str, np.ndarray]
    weights_source: str
    evaluator: Evaluator
    reference_name: str
    reference: Measurement
    int8: Measurement
    all_float: Measurement
    float_biases: int = 0  # biases restored to unrounded float values in `model` (study(float_from=...))

    def variant(self, float_layers: Iterable[Layer]) -> onnx.ModelProto:
        return with_float_layers(self.model, float_layers, self.weights)

    def all_but(self, layer: Layer) -> list[Layer]:
        return [u for u in self.layers if u.key != layer.key]


def prepare(model: onnx.ModelProto, argument: str = "model") -> onnx.ModelProto:
    """The exact analysis rewrites applied (the graph computes the same logits); raises for a graph without Q/DQ."""
    if not is_quantized(model):
        raise PipelineError(f"{argument} has no QuantizeLinear/DequantizeLinear nodes, so there is no quantized layer "
                            f"to analyse; pass the INT8 (Q/DQ) ONNX as {argument} and the FP32 one as fp32")
    ready, _ = make_tensorrt_ready(model, rewrites=ANALYSIS_REWRITES)
    return ready


def study(model: onnx.ModelProto, batches: list[np.ndarray], labels: Optional[np.ndarray] = None,
          fp32: Optional[onnx.ModelProto] = None, threads: int = 0,
          float_from: Optional[onnx.ModelProto] = None, device: str = "cpu") -> Study:
    """Prepare `model`, find its layers, choose their float weights and measure the reference, the INT8 graph
    and the all-float graph on `batches` (float32 NCHW; `labels` one per image, or None for agreement).

    `float_from`: the float ONNX of the model `model` quantizes (the FP32 one for PTQ; a QAT model's float twin,
    whose weights fine-tuning moved away from FP32's): the INT8 graph studied carries its unrounded biases
    (restore_float_biases), as the fast and fallback graphs do, and a layer kept in float takes its weight and
    bias. Without it, `model` as given and `fp32`'s weights. `fp32` stays the reference either way."""
    if fp32 is not None and is_quantized(fp32):
        raise PipelineError("fp32 holds QuantizeLinear/DequantizeLinear nodes; pass the FP32 (unquantized) ONNX "
                            "as fp32, or None to compare against the INT8 graph with every Q/DQ removed")
    model = prepare(model)
    graph = gs.import_onnx(model)
    source = fp32 if float_from is None else float_from
    matched = match_fp32_weights(graph, source) if source is not None else None  # once: weights and biases
    restored = 0
    if float_from is not None:
        restored = set_float_biases(graph, matched[0])
        model = _exported(graph, model)
    layers = find_layers(graph)
    if not layers:
        raise PipelineError("the model's Q/DQ nodes quantize no activation or Conv/Gemm/MatMul weight; there is "
                            "nothing to analyse")
    weights, described = _float_weights(graph, matched, "the FP32 ONNX" if float_from is None or float_from is fp32
                                        else "the float model's ONNX (float_from)")
    evaluator = Evaluator(batches, labels, threads, device)
    s = Study(model, layers, weights, described, evaluator, "", None, None, None, restored)  # measurements follow
    float_graph = s.variant(layers)
    s.reference_name = "the FP32 ONNX" if fp32 is not None else "the INT8 graph with every Q/DQ removed"
    s.reference = evaluator.set_reference(fp32 if fp32 is not None else float_graph)
    s.int8 = evaluator.measure(model)
    s.all_float = evaluator.measure(float_graph) if fp32 is not None else s.reference
    return s


def _float_weights(graph: gs.Graph, matched: Optional[tuple], name: str) -> tuple[dict[str, np.ndarray], str]:
    """The float weights of the layers: `matched` (match_fp32_weights' result against `name`) when every weight
    found one, else the dequantized int8 weights; and a sentence saying which."""
    dequant = {dq.outputs[0].name: dequantized(dq) for dq in weight_dequantizers(graph)}
    if matched is None:
        return dequant, ("dequantized int8 weights (no FP32 ONNX given: they compute what the quantized weights "
                         "compute, so weight quantization error is not measured)")
    found, missing = matched
    if missing:
        return dequant, (f"dequantized int8 weights: {len(missing)} of {len(dequant)} weights have no weight in "
                         f"{name} within half a quantization step (first: {missing[0]}), so weight quantization "
                         f"error is not measured")
    biases = sum(k.endswith(":bias") for k in found)
    return found, (f"{name}'s weights (all {len(found) - biases} matched by op, shape and value) and their "
                   f"{biases} biases")


# ---------------------------------------------------------------- the report

@dataclass
class LayerSensitivity:
    """One layer's figures. gain: points recovered when it alone is left in float; loss: points lost when it
    alone is quantized (None when not measured); points are 100 x the score."""

    rank: int
    name: str
    kind: str
    op: str
    key: str
    gain: float
    float_alone: Measurement
    loss: Optional[float] = None
    quantized_alone: Optional[Measurement] = None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass
class SensitivityReport:
    """The ranked layers and the three graphs every figure is relative to."""

    layers: list[LayerSensitivity]
    metric: str
    reference_name: str
    reference: Measurement
    int8: Measurement
    all_float: Measurement
    weights_source: str
    images: int
    evaluations: int
    seconds: float
    data: str = ""
    extra: dict = field(default_factory=dict)

    def top(self, k: int = 5) -> list[str]:
        """The labels of the `k` most sensitive layers, most sensitive first."""
        return [u.label for u in self.layers[:k]]

    def as_dict(self) -> dict:
        return asdict(self)


def _points(a: float, b: float) -> float:
    return round(100.0 * (a - b), 6)


def rank(layers: list[LayerSensitivity], int8: Measurement, images: int) -> list[LayerSensitivity]:
    """Sort by points recovered, a difference of one image counted as a tie (it is within noise: 100/images
    points), then by the logit error removed, then by the points lost alone; number them from 1."""
    pair = 200.0 / images  # two images, in points

    def key(u: LayerSensitivity) -> tuple:
        return (-int(u.gain / pair + 1e-9), -(int8.error - u.float_alone.error), -(u.loss or 0.0))

    out = sorted(layers, key=key)
    for r, u in enumerate(out, 1):
        u.rank = r
    return out


def analyze(s: Study, alone_quantized: bool = True, progress: bool = True, data: str = "") -> SensitivityReport:
    """Measure every layer of `s` alone in float and, with `alone_quantized`, alone quantized; rank them."""
    t0 = time.perf_counter()
    runs0 = s.evaluator.runs
    out = []
    bar = tqdm(s.layers, desc="sensitivity", unit="layer", disable=not progress, leave=False)
    for u in bar:
        bar.set_postfix_str(u.name[-40:])
        floated = s.evaluator.measure(s.variant([u]))
        item = LayerSensitivity(0, u.name, u.kind, u.op, u.key, _points(floated.score, s.int8.score), floated)
        if alone_quantized:
            item.quantized_alone = s.evaluator.measure(s.variant(s.all_but(u)))
            item.loss = _points(s.all_float.score, item.quantized_alone.score)
        out.append(item)
    return SensitivityReport(rank(out, s.int8, s.evaluator.images), s.evaluator.metric(), s.reference_name,
                             s.reference, s.int8, s.all_float, s.weights_source, s.evaluator.images,
                             s.evaluator.runs - runs0,
                             round(time.perf_counter() - t0, 3), data,
                             {"float_biases": s.float_biases} if s.float_biases else {})


def sensitivity(model: onnx.ModelProto, batches: list[np.ndarray], labels: Optional[np.ndarray] = None,
                fp32: Optional[onnx.ModelProto] = None, threads: int = 0, progress: bool = True,
                data: str = "") -> tuple[SensitivityReport, Study]:
    """The full report (both variants per layer) on `batches`; the study is returned for a fallback search."""
    s = study(model, batches, labels, fp32, threads)
    return analyze(s, progress=progress, data=data), s


def worst_layers(model: onnx.ModelProto, batches: list[np.ndarray], labels: Optional[np.ndarray] = None,
                 fp32: Optional[onnx.ModelProto] = None, k: int = 3, threads: int = 0) -> list[str]:
    """The `k` layers that recover the most when left alone in float (leave-one-out only: half the cost of the
    full report, one evaluation per layer), most sensitive first; for an error sentence."""
    return analyze(study(model, batches, labels, fp32, threads), alone_quantized=False, progress=False).top(k)


def random_inputs(images: int, shape: tuple, batch_size: int = 250, seed: int = 0) -> list[np.ndarray]:
    """`images` standard-normal float32 inputs of CHW `shape` (normalized images are roughly so), in batches (the
    project's one source of random inputs)."""
    from ..runtime.inputs import random_batches

    full, rest = divmod(images, batch_size)
    batches = random_batches((batch_size, *shape), full, seed) if full else []
    if rest:
        batches += random_batches((rest, *shape), 1, seed + 1)
    return [b.numpy() for b in batches]
