"""The agreement rule: is this Q/DQ graph what this PyTorch INT8 model computes? Pure functions of logits and scales.

Measured (docs/agreement.md, bench/agreement.py): on deep random networks at 96 px (ResNet50, ResNeXt101) a
faithful engine's INT8 logits differ from its own graph's by as much as two independent quantizations differ
(distance ratio up to 1.29 with qnnpack): the two computations round a few values one step apart, and the
network carries every such step to the logits (moving the inputs by 1% of the input quantization step moves
the graph's own logits as far as its quantization error). So no bound on logit distances separates a faithful
engine from a graph of the same weights calibrated on other batches (measured 0.92-1.71); the rule therefore
has three parts, each catching what the others cannot:

- distance ratio |PT - graph| / min(|PT - FP32|, |graph - FP32|) < AGREEMENT_RATIO_MAX: a graph of another
  model (measured 4.4-68) fails, two quantizations of one model (at most sqrt(1 + balance^2) apart) pass;
- balance max(|PT - FP32|, |graph - FP32|) / min(...) < AGREEMENT_BALANCE_MAX: the two are equally good
  approximations of FP32 (faithful engines 0.91-1.25), unlike an engine whose arithmetic drifts (onednn
  saturating u8*s8 pairs without VNNI: 1.72-7.9);
- on real images, argmax agreement >= AGREEMENT_MIN passes on its own (what accuracy figures rest on);
- provenance: every activation scale of the graph is one of the INT8 model's (scales_agree), which catches
  another calibration exactly, where logits cannot.
"""

from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np

from ..contract import AGREEMENT_BALANCE_MAX, AGREEMENT_MIN, AGREEMENT_RATIO_MAX

# Scales torch.ao fixes rather than observes (Hardsigmoid/Sigmoid outputs in [0, 1], Tanh in [-1, 1]), which no
# module of the converted model stores: torch.ao.quantization's fixed-qparams observers.
FIXED_QPARAMS_SCALES = (1.0 / 256.0, 2.0 / 256.0)


@dataclass(frozen=True)
class Verdict:
    """passed; value: the figure the bound is on; bound: the bound as text; failed: which part failed (None,
    'ratio', 'balance', 'scales'); figures: every number measured."""

    passed: bool
    value: Optional[float]
    bound: str
    failed: Optional[str] = None
    figures: dict = field(default_factory=dict)


def _dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


def rule_from_distances(pt_graph: float, pt_fp32: float, graph_fp32: float, argmax: Optional[float] = None,
                        real: bool = False) -> Verdict:
    """The rule on the three (unnormalized, same-norm) distances and, on real images, argmax agreement."""
    small, large = sorted((pt_fp32, graph_fp32))
    ratio = pt_graph / max(small, 1e-12)
    balance = large / max(small, 1e-12)
    figures = {"distance_ratio": ratio, "balance": balance, "pytorch_vs_graph": pt_graph, "pytorch_vs_fp32": pt_fp32,
               "graph_vs_fp32": graph_fp32}
    bound = f"distance_ratio < {AGREEMENT_RATIO_MAX:g} and balance < {AGREEMENT_BALANCE_MAX:g}"
    failed = "ratio" if ratio >= AGREEMENT_RATIO_MAX else ("balance" if balance >= AGREEMENT_BALANCE_MAX else None)
    if real and argmax is not None:
        figures["argmax_agreement"] = argmax
        bound = f"argmax_agreement >= {AGREEMENT_MIN} or ({bound})"
        failed = None if argmax >= AGREEMENT_MIN else failed
    return Verdict(failed is None, ratio, bound, failed, figures)


def agreement_rule(pt: np.ndarray, graph: np.ndarray, fp32: np.ndarray, real: bool = False) -> Verdict:
    """The rule on PyTorch INT8, Q/DQ graph and FP32 logits (same inputs, rows are samples); `real`: the inputs
    are real images, so argmax agreement may decide."""
    pt, graph, fp32 = (np.asarray(a, np.float64) for a in (pt, graph, fp32))
    if not pt.shape == graph.shape == fp32.shape:
        raise ValueError(f"logit shapes differ: PyTorch {pt.shape}, graph {graph.shape}, FP32 {fp32.shape}")
    argmax = float((pt.argmax(1) == graph.argmax(1)).mean())
    verdict = rule_from_distances(_dist(pt, graph), _dist(pt, fp32), _dist(graph, fp32), argmax, real)
    verdict.figures.setdefault("argmax_agreement", argmax)
    return verdict


def scales_agree(model_scales: Iterable[float], graph_scales: Iterable[float]) -> Verdict:
    """Every activation scale in the graph is one of the INT8 model's (compared as float32, as exported), or
    one torch.ao fixes; a graph of another calibration or model has others."""
    known = {np.float32(s) for s in model_scales} | {np.float32(s) for s in FIXED_QPARAMS_SCALES}
    graph = [np.float32(s) for s in graph_scales]
    foreign = sorted({float(s) for s in graph if s not in known})
    figures = {"graph_scales": len(set(graph)), "foreign_scales": len(foreign), "examples": foreign[:3]}
    return Verdict(not foreign and bool(graph), float(len(foreign)), "0 graph scales foreign to the INT8 model",
                   None if not foreign and graph else "scales", figures)


def model_activation_scales(int8_model) -> list[float]:
    """The output scales a converted eager-mode INT8 model stores (QuantStub, quantized conv/linear, functional)."""
    import torch

    scales = []
    for m in int8_model.modules():
        s = getattr(m, "scale", None)
        if isinstance(s, torch.Tensor) and s.numel() == 1:
            scales.append(float(s))
        elif isinstance(s, float):
            scales.append(s)
    return scales


def graph_activation_scales(model) -> list[float]:
    """Scales of the QuantizeLinear nodes of an ONNX graph that quantize activations (not weights)."""
    import onnx_graphsurgeon as gs

    from ..graph.onnx_utils import fold_constant_inputs

    graph = gs.import_onnx(model)
    fold_constant_inputs(graph)  # the exporter writes scales as Constant nodes
    return [float(np.asarray(n.inputs[1].values)) for n in graph.nodes if n.op == "QuantizeLinear"
            and isinstance(n.inputs[0], gs.Variable) and isinstance(n.inputs[1], gs.Constant)
            and np.asarray(n.inputs[1].values).size == 1]
