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

from ..contract import AGREEMENT_MIN, DISTANCE_RATIO_MAX, REAL_DISTANCE_RATIO_MAX
from ..eager.engines import AUTO, is_faithful
from .compare import argmax_agreement, relative_distance
from .result import Check


def distance_ratio(pt: np.ndarray, graph: np.ndarray, fp32: np.ndarray) -> float:
    """|PyTorch - graph| over the smaller of the two INT8 results' distances to FP32 (below 1: they agree)."""
    pt, graph, fp32 = (a.astype(np.float64) for a in (pt, graph, fp32))
    quantization_error = min(np.linalg.norm(graph - fp32), np.linalg.norm(pt - fp32))
    return float(np.linalg.norm(pt - graph) / max(quantization_error, 1e-12))


def agreement(pt: np.ndarray, graph: np.ndarray, fp32: Optional[np.ndarray], real: bool, engine: Optional[str],
              source: Optional[str] = None) -> Check:
    """PyTorch INT8 logits vs its Q/DQ graph's (and both vs FP32's) on the same inputs.

    Bound: random inputs, distance_ratio < DISTANCE_RATIO_MAX; real images (`real`), argmax agreement >=
    AGREEMENT_MIN or distance_ratio < REAL_DISTANCE_RATIO_MAX (without `fp32`, argmax alone). `engine` is the
    quantized engine PyTorch ran on, when known; `source` names the PyTorch side (default: "PyTorch INT8 (engine)").
    """
    source = source or f"PyTorch INT8 ({engine} engine)"
    if pt.shape != graph.shape:
        return Check("agreement", None, "same logit shape", False,
                     detail=f"the Q/DQ graph gives logits of shape {graph.shape[1:]}, the INT8 model {pt.shape[1:]}",
                     fix="the graph comes from a different model; re-export it from this one")
    inputs = "real" if real else "random"
    figures = {"inputs": inputs, "samples": int(len(pt)), "engine": engine,
               "pytorch_vs_graph_relative": relative_distance(pt, graph), "argmax_agreement": argmax_agreement(pt, graph)}
    passed, bounds = False, []
    if fp32 is not None:
        figures.update(pytorch_vs_fp32_relative=relative_distance(pt, fp32),
                       graph_vs_fp32_relative=relative_distance(graph, fp32),
                       distance_ratio=distance_ratio(pt, graph, fp32))
        limit = REAL_DISTANCE_RATIO_MAX if real else DISTANCE_RATIO_MAX
        passed, bounds = figures["distance_ratio"] < limit, [f"distance_ratio < {limit:g}"]
    if real:
        passed = passed or figures["argmax_agreement"] >= AGREEMENT_MIN
        bounds.append(f"argmax_agreement >= {AGREEMENT_MIN}")
    value = figures.get("distance_ratio", figures["argmax_agreement"])
    detail = (f"{source} vs the Q/DQ graph on {len(pt)} {inputs} inputs: argmax agreement "
              f"{figures['argmax_agreement']:.2%}, relative distance {figures['pytorch_vs_graph_relative']:.4f}")
    if "distance_ratio" in figures:
        detail += f", graph vs FP32 {figures['graph_vs_fp32_relative']:.4f}"
    return Check("agreement", value, " or ".join(bounds), passed, detail=detail, fix=_fix(engine), figures=figures)


def _fix(engine: Optional[str]) -> str:
    """What to try when PyTorch INT8 and its graph disagree: the cause the engine probe can tell, else the graph."""
    if engine is not None and not is_faithful(engine):
        return (f"the {engine} engine saturates 8-bit products on this CPU; quantize with engine {AUTO} (a faithful "
                f"engine chosen by probe)")
    return ("the graph most likely comes from a different model or calibration than this INT8 model; re-export it "
            "from this one")
