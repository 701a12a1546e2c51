"""The agreement rule: is a PyTorch INT8 model's Q/DQ graph its own graph? A pure function of logits.

PROVISIONAL: replaced once bench/agreement.py has measured the matrix (docs/agreement.md).
"""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..contract import AGREEMENT_MIN, DISTANCE_RATIO_MAX, REAL_DISTANCE_RATIO_MAX


@dataclass(frozen=True)
class Verdict:
    passed: bool
    value: float
    bound: str
    figures: dict = field(default_factory=dict)


def _norm(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


def agreement_rule(pt: np.ndarray, graph: np.ndarray, fp32: Optional[np.ndarray], real: bool) -> Verdict:
    fp32_norm = float(np.linalg.norm(fp32)) if fp32 is not None else None
    quant = min(_norm(pt, fp32), _norm(graph, fp32)) if fp32 is not None else None
    ratio = _norm(pt, graph) / max(quant, 1e-12) if quant is not None else float("nan")
    argmax = float((np.asarray(pt).argmax(1) == np.asarray(graph).argmax(1)).mean())
    limit = REAL_DISTANCE_RATIO_MAX if real else DISTANCE_RATIO_MAX
    passed = (quant is not None and ratio < limit) or (real and argmax >= AGREEMENT_MIN)
    return Verdict(passed, ratio, f"distance_ratio < {limit:g}", {"distance_ratio": ratio, "argmax_agreement": argmax,
                                                                   "fp32_norm": fp32_norm})
