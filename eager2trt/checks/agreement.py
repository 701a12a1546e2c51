"""Does PyTorch's INT8 model compute what its exported Q/DQ graph computes (in onnxruntime, as TensorRT will)?

PyTorch's eager INT8 model is the project's accuracy reference for the ONNX and TensorRT stages, so it must
agree with the graph. The distance rule: the two INT8 computations must be closer to each other than either
is to FP32 (distance_ratio below a bound). A faithful engine differs from the graph by rounding alone; an engine
that saturates 8-bit products (eager/engines.py) moves PyTorch away from the graph by more than the quantization
error, and a graph from another model is far from PyTorch while PyTorch stays near its FP32 model.
On real images argmax agreement >= 99% also passes: that is what accuracy figures rest on. On random inputs,
and on real images for an undertrained or badly quantized model, near-tied logits flip on one-LSB rounding
(measured: 83% and 94% agreement for two 3-epoch ResNet18s at 36% accuracy with onednn), so a distance
rule decides there. Bounds and their measurements live in contract.py.
"""

from typing import Optional

import numpy as np

from ..contract import AGREEMENT_MIN
from ..eager.engines import AUTO, is_faithful
from .agreement_rule import (agreement_rule, graph_activation_scales, model_activation_scales, rule_from_distances,
                             scales_agree)
from .result import Check
from .tally import Stats


def distance_ratio(pt: np.ndarray, graph: np.ndarray, fp32: np.ndarray) -> float:
    """|PyTorch - graph| over the smaller of the two INT8 results' distances to FP32 (the rule's own figure)."""
    return agreement_rule(pt, graph, fp32).figures["distance_ratio"]


def agreement(pt_graph: Stats, pt_fp32: Optional[Stats], graph_fp32: Optional[Stats], real: bool,
              engine: Optional[str], source: Optional[str] = None) -> Check:
    """PyTorch INT8's output vs its Q/DQ graph's (and both vs FP32's) on the same inputs, from their running
    statistics (checks/tally.py; Stats.of(pt, graph) for arrays).

    With the FP32 statistics: checks.agreement_rule (distance ratio and balance, or argmax agreement on real
    images; the measurements behind it are in docs/agreement.md). Without: argmax agreement >= AGREEMENT_MIN (real
    images). `engine` is the quantized engine PyTorch ran on, when known; `source` names the PyTorch side.
    """
    source = source or f"PyTorch INT8 ({engine} engine)"
    inputs = "real" if real else "random"
    figures = {"inputs": inputs, "samples": pt_graph.samples, "engine": engine,
               "pytorch_vs_graph_relative": pt_graph.relative, "argmax_agreement": pt_graph.agreement}
    failed = None
    if pt_fp32 is not None:
        verdict = rule_from_distances(pt_graph.distance, pt_fp32.distance, graph_fp32.distance, pt_graph.agreement,
                                      real)
        figures.update(verdict.figures, pytorch_vs_fp32_relative=pt_fp32.relative,
                       graph_vs_fp32_relative=graph_fp32.relative)
        passed, value, bound, failed = verdict.passed, verdict.value, verdict.bound, verdict.failed
    else:
        passed = figures["argmax_agreement"] >= AGREEMENT_MIN
        value, bound, failed = figures["argmax_agreement"], f"argmax_agreement >= {AGREEMENT_MIN}", "ratio"
    detail = (f"{source} vs the Q/DQ graph on {pt_graph.samples} {inputs} inputs: argmax agreement "
              f"{figures['argmax_agreement']:.2%}, relative distance {figures['pytorch_vs_graph_relative']:.4f}")
    if pt_fp32 is not None:
        detail += f", graph vs FP32 {figures['graph_vs_fp32_relative']:.4f}"
    return Check("agreement", value, bound, passed, detail=detail, fix=_fix(engine, failed), figures=figures)


def scale_provenance(int8_model, graph_model) -> Check:
    """Every activation scale of the Q/DQ graph is one the INT8 model stores: a graph of another calibration (or
    model) has others, which logit distances alone cannot tell on deep networks (docs/agreement.md)."""
    verdict = scales_agree(model_activation_scales(int8_model), graph_activation_scales(graph_model))
    return Check("scale_provenance", verdict.value, verdict.bound, verdict.passed,
                 detail=f"{verdict.figures['graph_scales']} distinct activation scales in the graph",
                 fix="the graph comes from another calibration or model; re-export it from this INT8 model",
                 figures=verdict.figures)


def _fix(engine: Optional[str], failed: Optional[str]) -> str:
    """What to try when PyTorch INT8 and its graph disagree: the cause the engine probe or the rule can tell."""
    if engine is not None and not is_faithful(engine):
        return (f"the {engine} engine saturates 8-bit products on this CPU; quantize with engine {AUTO} (a faithful "
                f"engine chosen by probe)")
    if failed == "balance":
        return ("one INT8 computation is much farther from FP32 than the other: the engine's arithmetic drifts from "
                "the graph; quantize with engine qnnpack")
    return ("the graph most likely comes from a different model or calibration than this INT8 model; re-export it "
            "from this one")
