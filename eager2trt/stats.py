"""How far apart may two computations of the same INT8 model score? From their measured argmax agreement.

The rule (what `same_model_accuracy_bound` returns). Let computations A and B (PyTorch INT8 and its Q/DQ
graph, the graph and a TensorRT engine) classify the same n labelled images, and let D be the images on which
their argmaxes differ, |D| = n (1 - agreement). Then

    acc_A - acc_B = (1/n) sum_i (correct_A(i) - correct_B(i)).

Outside D both predict the same class, so the term is 0; inside D it is -1, 0 or +1. Hence

    |acc_A - acc_B| <= |D| / n = 1 - agreement,

exactly, with no statistics, when the agreement was measured on the same images as the two accuracies; and the
bound is reached when on every disagreeing image one of the two is right. Issue 17's case: 99.54% agreement on
the 10,000 test images allows 0.46 points, the measured -0.12 points is within it, a fixed 0.1 point is not a
property of the model but of luck on the tied images.

When the agreement was measured on m other images from the same distribution, the disagreement rate p on the
n evaluated images is unknown. Its one-sided upper confidence limit from k = m (1 - agreement) disagreements
is the Wilson score bound p_u (z for the stated confidence); the disagreeing fraction of n new images, a
Binomial(n, p) count over n, then stays below p_u + z sqrt(p_u (1 - p_u) / n) but for a probability of about
2 (1 - confidence) (the union of the two one-sided failures). That sum bounds |acc_A - acc_B|.

Chains: D_AC is inside D_AB united with D_BC, so disagreement(A, C) <= disagreement(A, B) + disagreement(B, C):
`chained_disagreement` adds the links' disagreement rates (each measured on the same images).
"""

import math
from statistics import NormalDist
from typing import Optional

from .checks.result import Check
from .errors import PipelineError

DEFAULT_CONFIDENCE = 0.999


def _require_fraction(value: float, name: str) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise PipelineError(f"{name} must be a fraction in [0, 1], got {value!r}")
    return float(value)


def _require_count(value: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PipelineError(f"{name} must be a positive number of images, got {value!r}")
    return value


def wilson_upper(k: float, m: int, z: float) -> float:
    """One-sided Wilson score upper confidence limit of a binomial rate from k successes in m trials."""
    p = k / m
    centre = p + z * z / (2 * m)
    spread = z * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m))
    return min(1.0, (centre + spread) / (1 + z * z / m))


def same_model_accuracy_bound(agreement: float, n: int, measured_on: Optional[int] = None,
                              confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The largest |accuracy difference| (a fraction) two computations of one model may show on `n` images,
    given their argmax `agreement`, measured on the same `n` images (measured_on None or n: exact bound
    1 - agreement) or on `measured_on` other images (a bound holding with about 1 - 2 (1 - confidence))."""
    agreement = _require_fraction(agreement, "agreement")
    n = _require_count(n, "n")
    disagreeing = round(n * (1 - agreement)) / n if measured_on in (None, n) else None
    if disagreeing is not None:
        return disagreeing
    m = _require_count(measured_on, "measured_on")
    if not 0.5 < confidence < 1:
        raise PipelineError(f"confidence must be between 0.5 and 1, got {confidence!r}")
    z = NormalDist().inv_cdf(confidence)
    p_u = wilson_upper(m * (1 - agreement), m, z)
    return min(1.0, p_u + z * math.sqrt(p_u * (1 - p_u) / n))


def chained_disagreement(*agreements: float) -> float:
    """An upper bound on the disagreement rate of the ends of a chain A-B-C... from each link's agreement."""
    return min(1.0, sum(1 - _require_fraction(a, "agreement") for a in agreements))


def same_model_accuracy_check(accuracy: float, reference: float, agreement: float, n: int,
                              measured_on: Optional[int] = None, name: str = "accuracy",
                              confidence: float = DEFAULT_CONFIDENCE) -> Check:
    """`accuracy` of one computation of a model against `reference`, another computation's, held to
    same_model_accuracy_bound (a Check: the caller decides with checks.result.require)."""
    bound = same_model_accuracy_bound(agreement, n, measured_on, confidence)
    diff = _require_fraction(accuracy, "accuracy") - _require_fraction(reference, "reference")
    # half an image of slack: accuracies are counts over n turned into floats
    passed = abs(diff) <= bound + 0.5 / n
    where = "the same images" if measured_on in (None, n) else f"{measured_on} other images"
    return Check(name=name, value=diff, bound=f"|difference| <= {bound:.4f}",
                 passed=passed,
                 detail=f"{accuracy:.4f} vs {reference:.4f} on {n} images; argmax agreement {agreement:.4%} "
                        f"measured on {where} allows that much",
                 fix="the two computations disagree on more images than the agreement check measured; rerun the "
                     "agreement check on these images, or treat them as different models",
                 figures={"accuracy": accuracy, "reference": reference, "agreement": agreement, "samples": n,
                          "agreement_samples": measured_on or n, "bound": bound})


# The fast graph vs PyTorch INT8: not bit-exact (fewer rounding steps), so near-tied images may flip, but it is
# the same model. Two different well-trained CIFAR-10 ResNets agree on about 90% of test images, an untrained
# one on about 10%, so a bound above both tells "the same model" from "another model". Measured for the shipped
# ResNet18 on the 10,000 test images (qnnpack engine, 1 calibration batch of 128, AMD EPYC 2 cores): fast graph vs
# PyTorch INT8 0.9916, exact graph 0.9937. To move to contract.py with the other tolerances.
SAME_MODEL_AGREEMENT_MIN = 0.98


def agreement_check(agreement: float, n: int, minimum: float = SAME_MODEL_AGREEMENT_MIN,
                    name: str = "argmax agreement") -> Check:
    """Argmax agreement of two computations that should be one model, held to `minimum` (a Check)."""
    agreement = _require_fraction(agreement, "agreement")
    return Check(name=name, value=agreement, bound=f">= {minimum:g}", passed=agreement >= minimum,
                 detail=f"on {_require_count(n, 'n')} images",
                 fix="the reference most likely comes from another model or calibration than this graph; pass the "
                     "INT8 TorchScript exported together with this ONNX",
                 figures={"agreement": agreement, "samples": n, "minimum": minimum})
