"""Automatic mixed precision: keep the fewest quantized layers in float that bring the graph within an accuracy
budget of the reference, chosen greedily from the sensitivity ranking and measured after each step.

The result stays an explicit graph (TensorRT 11 is strongly typed: a layer's precision is what the graph says),
made TensorRT-ready by the exact surgery and checked by the lint's correctness rules. PyTorch's eager INT8
model cannot mirror an ONNX-level fallback, so the fallback graph is held to the reference (the FP32 model)
within the budget, no longer to PyTorch INT8 or to bit-exactness against the export.

The extra TensorRT layers are predicted from structure, not from a built engine: TensorRT fuses a
DequantizeLinear into the INT8 layer that consumes it and a QuantizeLinear into the INT8 layer that produces
its input (developer guide, "Explicit Quantization", Q/DQ fusion); every other activation Q or DQ runs as its
own reformat layer, so each float island between INT8 layers costs one at each edge.
"""

from dataclasses import dataclass, field
from typing import Optional

import onnx
import onnx_graphsurgeon as gs
from tqdm import tqdm

from ..checks.result import Check
from ..errors import PipelineError, require_float
from .lint import lint, passed
from .ops import COMPUTE_OPS, INT8_INPUTS, LOOK_THROUGH
from .placement import producer
from .sensitivity import Layer, Measurement, SensitivityReport, Study
from .surgery import make_tensorrt_ready

# Ops a Q can sit behind and still fuse into the INT8 layer before them (Conv + [Add] + ReLU epilogues).
EPILOGUE_OPS = ("Relu", "Add") + LOOK_THROUGH


# ---------------------------------------------------------------- structural prediction (queries, no edits)

def _from_activation_dq(t) -> bool:
    dq = producer(t)
    return dq is not None and dq.op == "DequantizeLinear" and getattr(producer(dq.inputs[0]), "op", None) == \
        "QuantizeLinear" and isinstance(producer(dq.inputs[0]).inputs[0], gs.Variable)


def _from_weight_dq(t) -> bool:
    dq = producer(t)
    return dq is not None and dq.op == "DequantizeLinear" and not _from_activation_dq(t)


def int8_layers(graph: gs.Graph) -> set[int]:
    """ids of the nodes TensorRT runs in INT8: every activation input from a Q/DQ pair and, for Conv/Gemm,
    the weight from a DequantizeLinear."""
    out = set()
    for n in graph.nodes:
        slots = [i for i in INT8_INPUTS.get(n.op, ()) if i < len(n.inputs)]
        if n.op in ("Conv", "ConvTranspose", "Gemm"):
            weight_ok = len(n.inputs) > 1 and _from_weight_dq(n.inputs[1])
        else:
            weight_ok = True
        if slots and weight_ok and all(_from_activation_dq(n.inputs[i]) or (n.op == "MatMul" and _from_weight_dq(
                n.inputs[i])) for i in slots):
            out.add(id(n))
    return out


def _q_fuses(q: gs.Node, int8: set[int]) -> bool:
    """A Q fuses into an INT8 producer, looking back through epilogue ops (first input of each)."""
    node = producer(q.inputs[0])
    while node is not None and node.op in EPILOGUE_OPS and id(node) not in int8:
        node = producer(node.inputs[0])
    return node is not None and id(node) in int8


def _dq_fuses(dq: gs.Node, int8: set[int]) -> bool:
    """A DQ fuses when each consumer is an INT8 layer, or an Add fused into an INT8 Conv's epilogue, looking
    forward through the ops TensorRT moves Q/DQ across."""
    stack, seen = list(dq.outputs[0].outputs), set()
    if not stack:
        return False
    while stack:
        c = stack.pop()
        if id(c) in int8 or (c.op == "Add" and any(id(producer(t)) in int8 for t in c.inputs if producer(t))):
            continue
        if c.op in LOOK_THROUGH and id(c) not in seen:
            seen.add(id(c))
            stack.extend(x for t in c.outputs for x in t.outputs)
            continue
        return False
    return True


def standalone_qdq(model: onnx.ModelProto) -> dict:
    """Predicted TensorRT layers of `model`: activation Q/DQ left unfused (reformats), and compute layers that
    run in float (Conv/Gemm/MatMul not INT8)."""
    graph = gs.import_onnx(model)
    int8 = int8_layers(graph)
    qs = [n for n in graph.nodes if n.op == "QuantizeLinear" and isinstance(n.inputs[0], gs.Variable)]
    dqs = [n for n in graph.nodes if n.op == "DequantizeLinear" and _from_activation_dq(n.outputs[0])]
    return {"unfused_q": sum(not _q_fuses(q, int8) for q in qs), "unfused_dq": sum(not _dq_fuses(d, int8) for d in dqs),
            "float_compute": sum(n.op in COMPUTE_OPS and id(n) not in int8 for n in graph.nodes)}


def extra_layers(before: onnx.ModelProto, after: onnx.ModelProto) -> dict:
    """How many more reformat (unfused Q/DQ) layers and float compute layers `after` predicts than `before`."""
    a, b = standalone_qdq(before), standalone_qdq(after)
    reformat = (b["unfused_q"] + b["unfused_dq"]) - (a["unfused_q"] + a["unfused_dq"])
    return {"reformat_layers": reformat, "float_compute_layers": b["float_compute"] - a["float_compute"],
            "before": a, "after": b}


# ---------------------------------------------------------------- the search

@dataclass
class FallbackResult:
    """The fallback graph (TensorRT-ready, lint-clean), the layers kept in float, and what it was held to."""

    model: onnx.ModelProto
    kept: list[str]
    measurement: Measurement
    reference_score: float
    budget: float
    reached: bool
    metric: str
    held_to: str
    extra_layers: dict
    evaluations: int
    steps: list = field(default_factory=list)

    def check(self) -> Check:
        """The budget as a Check: score >= reference - budget points."""
        bound = self.reference_score - self.budget / 100.0
        return Check("fallback.accuracy", self.measurement.score, f">= {bound:.4f}", self.reached,
                     detail=f"{self.metric}; {len(self.kept)} layers kept in float; held to {self.held_to}",
                     fix="no set of layers from the sensitivity ranking reaches the budget in float: use a better "
                         "calibration or quantization-aware training, or raise the budget",
                     figures={"kept": self.kept, "extra_layers": self.extra_layers})

    def as_dict(self) -> dict:
        return {"kept": self.kept, "score": self.measurement.score, "error": self.measurement.error,
                "accuracy": self.measurement.accuracy, "reference_score": self.reference_score,
                "budget_points": self.budget, "reached": self.reached, "metric": self.metric,
                "held_to": self.held_to, "extra_layers": self.extra_layers, "evaluations": self.evaluations,
                "steps": self.steps}


def _within(m: Measurement, target: float) -> bool:
    return m.score >= target - 1e-12


def greedy_layers(s: Study, ranking: list[Layer], budget: float, max_layers: Optional[int] = None,
                  prune: bool = True, progress: bool = True) -> tuple[list[Layer], Measurement, bool, list]:
    """Add layers in ranking order until the score is within `budget` points of the reference; then, with
    `prune`, drop each kept layer (latest first) whose removal stays within budget. Returns (layers, their
    measurement, reached, steps)."""
    target = s.reference.score - budget / 100.0
    kept, current, steps = [], s.int8, []
    # never every layer: that graph has no Q/DQ left (it is the FP32 model, and the exact surgery refuses it)
    limit = len(ranking) - 1 if max_layers is None else min(max_layers, len(ranking) - 1)
    bar = tqdm(total=limit, desc="fallback", unit="layer", disable=not progress, leave=False)
    for layer in ranking[:limit]:
        if _within(current, target):
            break
        kept.append(layer)
        current = s.evaluator.measure(s.variant(kept))
        steps.append({"add": layer.label, "score": current.score})
        bar.update()
    bar.close()
    reached = _within(current, target)
    if reached and prune:
        for layer in list(reversed(kept[:-1])):
            trial = [u for u in kept if u.key != layer.key]
            m = s.evaluator.measure(s.variant(trial))
            steps.append({"drop": layer.label, "score": m.score, "kept": _within(m, target)})
            if _within(m, target):
                kept, current = trial, m
    return kept, current, reached, steps


def fallback(s: Study, report: SensitivityReport, budget: float = 1.0, max_layers: Optional[int] = None,
             prune: bool = True, progress: bool = True) -> FallbackResult:
    """Keep the fewest layers of `report`'s ranking in float that bring `s`'s graph within `budget` points of
    its reference (measured on `s`'s batches); return the TensorRT-ready, lint-checked graph and its figures."""
    require_float("budget", budget, 0.0)
    runs0 = s.evaluator.runs
    by_key = {u.key: u for u in s.layers}
    ranking = [by_key[item.key] for item in report.layers]
    kept, measurement, reached, steps = greedy_layers(s, ranking, budget, max_layers, prune, progress)
    ready, _ = make_tensorrt_ready(s.variant(kept) if kept else s.model)
    findings = lint(ready)
    if not passed(findings):
        rule = next(r for r, f in findings.items() if f)
        raise PipelineError(f"the fallback graph breaks TensorRT's rule {rule} at {findings[rule][0].node} "
                            f"({findings[rule][0].message}); please report this model")
    biases = f" and carries {s.float_biases} unrounded float biases" if s.float_biases else ""
    held_to = (f"{s.reference_name} within {budget:g} points ({s.evaluator.metric()}): PyTorch's eager INT8 model "
               f"cannot mirror an ONNX-level fallback{biases}, so the graph is no longer compared with PyTorch INT8"
               if kept or s.float_biases else "PyTorch INT8 as before (no layer needed to be kept in float)")
    return FallbackResult(ready, [u.label for u in kept], measurement, s.reference.score, budget, reached,
                          s.evaluator.metric(), held_to, extra_layers(make_tensorrt_ready(s.model)[0], ready),
                          s.evaluator.runs - runs0, steps)
