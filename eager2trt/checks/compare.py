"""Checks on outputs already measured: each takes running statistics (checks/tally.py: Stats of a candidate's
output against a reference's, a Score's figures) or arrays, returns one Check, runs nothing.

Keeping measurement apart from running means each graph is evaluated once per run, in lockstep with the others
(runtime.backends.run_together), and its statistics serve every check that needs them: equivalence, accuracy,
agreement and the fast graph's error bound. A model with several outputs gets one check per output, joined by
`each_output` into one (it passes when every output passes).
"""

from dataclasses import replace
from typing import Optional

import numpy as np

from ..contract import (ACCURACY_MATCH, AGREEMENT_MIN, EQUIVALENCE_ATOL, FAST_ERROR_RATIO, GPU_CPU_ERROR_FLOOR,
                        GPU_CPU_RATIO)
from .result import Check
from .tally import Stats


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return Stats.of(a, b).max_abs


def argmax_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of inputs on which two logit arrays pick the same class."""
    return Stats.of(a, b).agreement


def relative_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| over all logits (Frobenius norms)."""
    return Stats.of(a, b).relative


def each_output(checks: list, names: list) -> Check:
    """One check over a model's outputs: passed when every output's passed; value, bound, detail and fix are the
    first failing output's (else the first output's), with every output's figures under "outputs"."""
    if len(checks) == 1:
        return checks[0]
    i = next((k for k, c in enumerate(checks) if not c.passed), 0)
    return replace(checks[i], passed=all(c.passed for c in checks),
                   detail=f"output {names[i]} (of {', '.join(names)}, each checked): {checks[i].detail}",
                   figures={**checks[i].figures, "outputs": {n: c.figures for n, c in zip(names, checks)}})


def equivalence(stats: Stats, atol: float = EQUIVALENCE_ATOL, name: str = "equivalence",
                what: str = "the rewritten graph vs the export") -> Check:
    """Max abs difference of one output of two graphs on the same inputs (Stats.of(candidate, reference) for
    arrays), held to `atol`."""
    diff, agree = stats.max_abs, stats.agreement
    return Check(name, diff, f"<= {atol:g}", diff <= atol,
                 detail=f"{what}, {stats.samples} inputs, onnxruntime with Q/DQ as written, argmax agreement "
                        f"{agree:.4%}",
                 fix="the rewritten graph is not the same model; please report it with the ONNX file",
                 figures={"max_abs_diff": diff, "argmax_agreement": agree, "samples": stats.samples, "atol": atol})


def error_ratio(exact: Stats, fast: Stats, bound: float = FAST_ERROR_RATIO) -> Check:
    """Mean abs error against FP32 of the fast graph's output over the exact graph's, on the same inputs (each a
    Stats against FP32: Stats.of(exact, fp32) for arrays)."""
    exact_err, fast_err = exact.mean_abs, fast.mean_abs
    ratio = fast_err / exact_err if exact_err > 0 else (0.0 if fast_err == 0 else float("inf"))
    return Check("fast_error_ratio", ratio, f"<= {bound:g}", ratio <= bound,
                 detail=f"mean abs logit error vs FP32 on {fast.samples} inputs: fast {fast_err:.4g}, exact "
                        f"{exact_err:.4g}",
                 fix="use the exact graph for this model",
                 figures={"fast_error": fast_err, "exact_error": exact_err, "ratio": ratio, "bound": bound,
                          "samples": fast.samples})


def gpu_matches_cpu(gpu_vs_cpu: Stats, gpu_vs_fp32: Stats, ratio: float = GPU_CPU_RATIO,
                    floor: float = GPU_CPU_ERROR_FLOOR, agreement_min: float = AGREEMENT_MIN) -> Check:
    """One output of a graph run on the GPU (runtime/torch_graph.py) against the same graph in onnxruntime on the
    CPU, on the same samples: their relative distance at most `ratio` times the graph's relative error against
    FP32 (an error under `floor` counts as `floor`), and their argmax agreement at least `agreement_min`, so the
    GPU's figures are the CPU check's to within what INT8 itself changes. Float kernels that differ in the last
    bit (sums in another order, sigmoid) round a value at a quantization step's midpoint the other way, and on a
    deep network each such step moves the next layers' values (contract.GPU_CPU_RATIO)."""
    value, bound = gpu_vs_cpu.relative, ratio * max(gpu_vs_fp32.relative, floor)
    passed = value <= bound and gpu_vs_cpu.agreement >= agreement_min
    return Check("gpu_vs_cpu", value, f"<= {bound:.3g}, argmax agreement >= {agreement_min:.0%}", passed,
                 detail=f"the graph on the GPU vs onnxruntime on the CPU, {gpu_vs_cpu.samples} samples: relative "
                        f"distance {value:.3g}, bound {ratio:g} x its INT8 error vs FP32 "
                        f"({gpu_vs_fp32.relative:.3g}, at least {floor:g}), max abs difference "
                        f"{gpu_vs_cpu.max_abs:.3g}, argmax agreement {gpu_vs_cpu.agreement:.4%}",
                 fix="the GPU does not compute the graph as the CPU check does; evaluate on the CPU (--device cpu) "
                     "and please report it with the ONNX file",
                 figures={"relative_distance": value, "bound": bound, "int8_error": gpu_vs_fp32.relative,
                          "max_abs_diff": gpu_vs_cpu.max_abs, "argmax_agreement": gpu_vs_cpu.agreement,
                          "samples": gpu_vs_cpu.samples})


def distance_recorded(name: str, stats: Stats, what: str) -> Check:
    """How far one output of a graph is from FP32's (relative distance, argmax agreement), recorded, never failed
    (checks/policy.py RECORD): the figure for outputs no label scores (boxes, embeddings, maps)."""
    return Check(name, stats.relative, "recorded", True,
                 detail=f"{what} vs FP32, relative distance on {stats.samples} inputs, argmax agreement "
                        f"{stats.agreement:.2%}",
                 figures={"relative_distance": stats.relative, "argmax_agreement": stats.agreement,
                          "mean_abs_error": stats.mean_abs, "samples": stats.samples})


def _agreement_words(figures: dict, agreement: Optional[float], words: str) -> str:
    if agreement is None:
        return ""
    figures["argmax_agreement"] = agreement
    return f", argmax agreement {words}{agreement:.2%}"


def accuracy_at_least(name: str, accuracy: float, samples: int, reference: float, drop: float, reference_name: str,
                      fix: str, agreement: Optional[float] = None) -> Check:
    """`accuracy` (top-1, or the run's metric) at least `reference` minus `drop` (one-sided: better never fails)."""
    bound = reference - drop
    figures = {"accuracy": accuracy, "reference_accuracy": reference, "reference": reference_name, "bound": bound,
               "samples": samples}
    detail = f"{samples} images, {reference_name} {reference:.4f} minus {100 * drop:.2f} points"
    detail += _agreement_words(figures, agreement, "with it ")
    return Check(name, accuracy, f">= {bound:.4f}", accuracy >= bound - 1e-9, detail=detail, fix=fix, figures=figures)


def accuracy_matches(name: str, accuracy: float, samples: int, reference: float, reference_name: str,
                     tolerance: float = ACCURACY_MATCH, fix: str = "") -> Check:
    """`accuracy` within `tolerance` of `reference`, either way (an engine vs its PyTorch model)."""
    diff = accuracy - reference
    return Check(name, accuracy, f"{reference:.4f} +/- {tolerance:.4f}", abs(diff) <= tolerance + 1e-9,
                 detail=f"{samples} images, {reference_name} {reference:.4f}, difference {100 * diff:+.2f} points",
                 fix=fix, figures={"accuracy": accuracy, "reference_accuracy": reference, "reference": reference_name,
                                   "difference": diff, "tolerance": tolerance, "samples": samples})


def accuracy_recorded(name: str, accuracy: float, samples: int, reference: float, reference_name: str,
                      agreement: Optional[float] = None) -> Check:
    """`accuracy` beside another computation's `reference`, recorded, never failed (checks/policy.py RECORD): for
    two graphs that are not meant to compute the same function."""
    figures = {"accuracy": accuracy, "reference_accuracy": reference, "reference": reference_name,
               "difference": accuracy - reference, "samples": samples}
    detail = f"{samples} images, {reference_name} {reference:.4f}, difference {100 * (accuracy - reference):+.2f} points"
    detail += _agreement_words(figures, agreement, "")
    return Check(name, accuracy, "recorded", True, detail=detail, figures=figures)
