"""Does PyTorch's INT8 model compute what its exported Q/DQ graph computes (in onnxruntime, as TensorRT will)?

PyTorch's eager INT8 model is the project's accuracy reference for the ONNX and TensorRT stages, so it must
agree with the graph. The distance rule: the two INT8 computations must be closer to each other than either
is to FP32 (distance_ratio < 1 on random inputs). A faithful engine differs from the graph by rounding alone; a drifting
engine (x86/fbgemm on depthwise models) moves PyTorch away from the graph by more than the quantization
error, and a graph from another model is far from PyTorch while PyTorch stays near its FP32 model.
On real images argmax agreement >= 99% also passes: that is what accuracy figures rest on. On random inputs,
and on real images for an undertrained or badly quantized model, near-tied logits flip on one-LSB rounding
(measured: 83% and 94% agreement for two 3-epoch ResNet18s at 36% accuracy with onednn), so a distance
rule decides there.
"""

from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
import onnx
import torch

from ..contract import AGREEMENT_MIN as REAL_AGREEMENT_MIN, DISTANCE_RATIO_MAX, REAL_DISTANCE_RATIO_MAX
from ..errors import PipelineError
from ..eager.engines import DEFAULT_ENGINE, DRIFTING_ENGINES
from .compare import ort_logits, ort_session

# Bounds and their measurements live in contract.py.

Reference = Union[torch.nn.Module, Path, str, onnx.ModelProto]


def logits(model: Reference, batches: list) -> np.ndarray:
    """Float64 logits of a PyTorch module or an ONNX model (onnxruntime, graph as written) on `batches`."""
    if isinstance(model, torch.nn.Module):
        model = model.eval().cpu()
        with torch.no_grad():
            out = [model(torch.as_tensor(b)).float().numpy() for b in batches]
    else:
        out = [ort_logits(ort_session(model if isinstance(model, onnx.ModelProto) else Path(model)),
                          [np.asarray(b, dtype=np.float32) for b in batches])]
    return np.concatenate(out).astype(np.float64)


def relative_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| over all logits (Frobenius norms)."""
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def distance_ratio(pt: np.ndarray, graph: np.ndarray, fp32: np.ndarray) -> float:
    """|PyTorch - graph| over the smaller of the two INT8 results' distances to FP32 (below 1: they agree)."""
    quantization_error = min(np.linalg.norm(graph - fp32), np.linalg.norm(pt - fp32))
    return float(np.linalg.norm(pt - graph) / max(quantization_error, 1e-12))


def argmax_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


def check_agreement(int8_model: torch.nn.Module, qdq_onnx: Union[Path, str, onnx.ModelProto],
                    fp32_model: Optional[Reference], batches: Iterable, real: bool) -> dict:
    """Compare PyTorch INT8 with its Q/DQ graph (and both with FP32); raise outside the bound.

    Bound: random inputs, distance_ratio < DISTANCE_RATIO_MAX; real images (`real`), argmax agreement >=
    REAL_AGREEMENT_MIN or distance_ratio < REAL_DISTANCE_RATIO_MAX (without `fp32_model`, argmax alone).
    """
    batches = list(batches)
    if not real and fp32_model is None:
        raise PipelineError("the agreement check on random inputs needs the FP32 model to measure the "
                            "quantization error it compares with; pass fp32_model")
    engine = torch.backends.quantized.engine  # the INT8 model runs on the engine set now
    pt, graph = logits(int8_model, batches), logits(qdq_onnx, batches)
    if pt.shape != graph.shape:
        raise PipelineError(f"the Q/DQ graph gives logits of shape {graph.shape[1:]} but the INT8 model "
                            f"{pt.shape[1:]}; the graph comes from a different model, re-export it from this one")
    result = {"inputs": "real" if real else "random", "samples": int(pt.shape[0]), "engine": engine,
              "pytorch_vs_graph_relative": relative_distance(pt, graph),
              "argmax_agreement": argmax_agreement(pt, graph)}
    ok, bounds = False, []
    if fp32_model is not None:
        fp32 = logits(fp32_model, batches)
        result.update(pytorch_vs_fp32_relative=relative_distance(pt, fp32),
                      graph_vs_fp32_relative=relative_distance(graph, fp32),
                      distance_ratio=distance_ratio(pt, graph, fp32))
        limit = REAL_DISTANCE_RATIO_MAX if real else DISTANCE_RATIO_MAX
        ok, bounds = result["distance_ratio"] < limit, [f"distance_ratio < {limit:g}"]
    if real:
        ok = ok or result["argmax_agreement"] >= REAL_AGREEMENT_MIN
        bounds.append(f"argmax_agreement >= {REAL_AGREEMENT_MIN}")
    result.update(bound=" or ".join(bounds), ok=ok)
    if not ok:
        raise PipelineError(_failure(result))
    return result


def _failure(r: dict) -> str:
    """One sentence: what was measured, the likely cause, the engine (or fix) to try."""
    measured = f"argmax agreement {r['argmax_agreement']:.2%} on {r['samples']} {r['inputs']} inputs"
    if "distance_ratio" in r:
        measured += f", distance to the graph {r['distance_ratio']:.2f} times the INT8-to-FP32 distance"
    measured += f" (bound: {r['bound']})"
    if r["engine"] in DRIFTING_ENGINES:
        cause = (f"the {r['engine']} engine's 16-bit intermediate products overflow at full-range activations "
                 f"(depthwise convolutions show it most); quantize with --engine {DEFAULT_ENGINE}")
    else:
        cause = (f"the graph most likely comes from a different model or calibration than this INT8 model "
                 f"(re-export it from this one), else try --engine qnnpack")
    return f"PyTorch INT8 ({r['engine']} engine) disagrees with the Q/DQ ONNX graph: {measured}; {cause}"


def print_agreement(r: dict) -> None:
    """One line with the figures and the bound."""
    extra = (f", graph vs FP32 {r['graph_vs_fp32_relative']:.4f}, distance ratio {r['distance_ratio']:.2f}"
             if "distance_ratio" in r else "")
    print(f"PyTorch INT8 ({r['engine']}) vs Q/DQ ONNX on {r['samples']} {r['inputs']} inputs: argmax agreement "
          f"{r['argmax_agreement']:.4%}, relative distance {r['pytorch_vs_graph_relative']:.4f}{extra}; "
          f"bound {r['bound']}: OK")
