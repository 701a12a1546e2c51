"""Test helpers: run ONNX models on the same inputs (the project's one logits loop) and compare them with the
project's checks, so tests read the same Check objects the pipeline decides on."""

from eager2trt.checks import compare
from eager2trt.contract import EQUIVALENCE_ATOL, FAST_ERROR_RATIO
from eager2trt.runtime.backends import OnnxRunner, logits


def onnx_logits(model, batches):
    return logits(OnnxRunner(model), batches, desc=False)


def ort_equivalence(a, b, batches, atol=EQUIVALENCE_ATOL):
    return compare.equivalence(onnx_logits(a, batches), onnx_logits(b, batches), atol)


def ort_error_ratio(fp32, exact, fast, batches, bound=FAST_ERROR_RATIO):
    return compare.error_ratio(*(onnx_logits(m, batches) for m in (fp32, exact, fast)), bound=bound)
