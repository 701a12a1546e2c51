"""Checks on logits already computed (runtime.backends.logits): each takes arrays, returns one Check, runs nothing.

Keeping measurement apart from running means each graph is evaluated once per run and its logits serve every
check that needs them: equivalence, accuracy, agreement and the fast graph's error bound.
"""

from typing import Optional

import numpy as np

from ..contract import ACCURACY_MATCH, EQUIVALENCE_ATOL, FAST_ERROR_RATIO
from ..runtime.backends import accuracy_of
from .result import Check


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def argmax_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of inputs on which two logit arrays pick the same class."""
    return float((a.argmax(1) == b.argmax(1)).mean())


def relative_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| over all logits (Frobenius norms)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def equivalence(reference: np.ndarray, candidate: np.ndarray, atol: float = EQUIVALENCE_ATOL,
                name: str = "equivalence", what: str = "the rewritten graph vs the export") -> Check:
    """Max abs logit difference of two graphs on the same inputs, held to `atol`."""
    diff = max_abs_diff(reference, candidate)
    agree = argmax_agreement(reference, candidate)
    return Check(name, diff, f"<= {atol:g}", diff <= atol,
                 detail=f"{what}, {len(reference)} inputs, onnxruntime with Q/DQ as written, argmax agreement "
                        f"{agree:.4%}",
                 fix="the rewritten graph is not the same model; please report it with the ONNX file",
                 figures={"max_abs_diff": diff, "argmax_agreement": agree, "samples": int(len(reference)),
                          "atol": atol})


def error_ratio(fp32: np.ndarray, exact: np.ndarray, fast: np.ndarray, bound: float = FAST_ERROR_RATIO) -> Check:
    """Mean abs logit error against FP32 of the fast graph over that of the exact graph, on the same inputs."""
    exact_err = float(np.abs(exact.astype(np.float64) - fp32).mean())
    fast_err = float(np.abs(fast.astype(np.float64) - fp32).mean())
    ratio = fast_err / exact_err if exact_err > 0 else (0.0 if fast_err == 0 else float("inf"))
    return Check("fast_error_ratio", ratio, f"<= {bound:g}", ratio <= bound,
                 detail=f"mean abs logit error vs FP32 on {len(fp32)} inputs: fast {fast_err:.4g}, exact {exact_err:.4g}",
                 fix="use the exact graph for this model",
                 figures={"fast_error": fast_err, "exact_error": exact_err, "ratio": ratio, "bound": bound,
                          "samples": int(len(fp32))})


def accuracy_at_least(name: str, logits: np.ndarray, labels, reference: float, drop: float, reference_name: str,
                      fix: str, agreement_with: Optional[np.ndarray] = None) -> Check:
    """Top-1 accuracy of `logits` at least `reference` minus `drop` (one-sided: better is never a failure)."""
    acc = accuracy_of(logits, labels)
    bound = reference - drop
    figures = {"accuracy": acc, "reference_accuracy": reference, "reference": reference_name, "bound": bound,
               "samples": int(len(logits))}
    detail = f"{len(logits)} images, {reference_name} {reference:.4f} minus {100 * drop:.2f} points"
    if agreement_with is not None:
        figures["argmax_agreement"] = argmax_agreement(logits, agreement_with)
        detail += f", argmax agreement with it {figures['argmax_agreement']:.2%}"
    return Check(name, acc, f">= {bound:.4f}", acc >= bound - 1e-9, detail=detail, fix=fix, figures=figures)


def accuracy_matches(name: str, logits: np.ndarray, labels, reference: float, reference_name: str,
                     tolerance: float = ACCURACY_MATCH, fix: str = "") -> Check:
    """Top-1 accuracy of `logits` within `tolerance` of `reference`, either way (an engine vs its PyTorch model)."""
    acc = accuracy_of(logits, labels)
    diff = acc - reference
    return Check(name, acc, f"{reference:.4f} +/- {tolerance:.4f}", abs(diff) <= tolerance + 1e-9,
                 detail=f"{len(logits)} images, {reference_name} {reference:.4f}, difference {100 * diff:+.2f} points",
                 fix=fix, figures={"accuracy": acc, "reference_accuracy": reference, "reference": reference_name,
                                   "difference": diff, "tolerance": tolerance, "samples": int(len(logits))})


def accuracy_recorded(name: str, logits: np.ndarray, labels, reference: float, reference_name: str,
                      agreement_with: Optional[np.ndarray] = None) -> Check:
    """Top-1 of `logits` beside another computation's `reference`, recorded, never failed (checks/policy.py
    RECORD): for two graphs that are not meant to compute the same function."""
    acc = accuracy_of(logits, labels)
    figures = {"accuracy": acc, "reference_accuracy": reference, "reference": reference_name,
               "difference": acc - reference, "samples": int(len(logits))}
    detail = f"{len(logits)} images, {reference_name} {reference:.4f}, difference {100 * (acc - reference):+.2f} points"
    if agreement_with is not None:
        figures["argmax_agreement"] = argmax_agreement(logits, agreement_with)
        detail += f", argmax agreement {figures['argmax_agreement']:.2%}"
    return Check(name, acc, "recorded", True, detail=detail, figures=figures)
