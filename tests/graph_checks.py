"""Test helpers: run ONNX models on the same inputs (the project's one logits loop) and compare them with the
project's checks, so tests read the same Check objects the pipeline decides on."""

from eager2trt.checks import compare
from eager2trt.checks.tally import Stats
from eager2trt.contract import EQUIVALENCE_ATOL, FAST_ERROR_RATIO
from eager2trt.runtime.backends import OnnxRunner, logits


def onnx_logits(model, batches):
    return logits(OnnxRunner(model), batches, desc=False)


def ort_equivalence(a, b, batches, atol=EQUIVALENCE_ATOL):
    return compare.equivalence(Stats.of(onnx_logits(b, batches), onnx_logits(a, batches)), atol)


def ort_error_ratio(fp32, exact, fast, batches, bound=FAST_ERROR_RATIO):
    ref, exact, fast = (onnx_logits(m, batches) for m in (fp32, exact, fast))
    return compare.error_ratio(Stats.of(exact, ref), Stats.of(fast, ref), bound=bound)


def ort_accuracy(model, split):
    """Top-1 and logits of an ONNX model on a split (the project's evaluate loop)."""
    from eager2trt.runtime.backends import evaluate

    ev = evaluate(OnnxRunner(model), split, progress=False)
    return ev.accuracy, ev.logits
