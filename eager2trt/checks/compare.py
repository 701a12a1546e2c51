"""Numerical checks in onnxruntime: equivalence of two graphs and accuracy on the test set."""

from pathlib import Path
from typing import Iterable, Union

import numpy as np
import onnx
import torch

from ..eager.data import Split, iterate_batches
from ..contract import EQUIVALENCE_ATOL, FAST_ERROR_RATIO
from ..errors import PipelineError


def ort_session(model: Union[Path, onnx.ModelProto], optimize: bool = False, threads: int = 0):
    """An onnxruntime CPU session; graph optimizations off by default so we test the graph as written."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        name = "the model" if isinstance(model, onnx.ModelProto) else str(model)
        raise PipelineError(f"onnxruntime cannot load {name} ({str(exc).splitlines()[0][:160]}); "
                            f"check that it is an ONNX model exported by this project") from None


def ort_logits(session, batches: Iterable[np.ndarray]) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: b})[0] for b in batches])


def compare(a: np.ndarray, b: np.ndarray, atol: float = EQUIVALENCE_ATOL) -> dict:
    """Max abs difference and argmax agreement of two logit arrays, with the bound they were held to."""
    max_abs = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
    agreement = float((a.argmax(1) == b.argmax(1)).mean())
    return {"max_abs_diff": max_abs, "argmax_agreement": agreement, "atol": atol, "ok": max_abs <= atol}


def image_batches(split: Split, batch_size: int = 500) -> list:
    """Normalized images as float32 numpy batches, in order."""
    return [x.numpy() for x, _ in iterate_batches(split, batch_size)]


def input_shape(model: onnx.ModelProto, batch_size: int = 8) -> list[int]:
    """The first graph input's shape, a symbolic batch dimension replaced by `batch_size`."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else (batch_size if i == 0 else None) for i, d in enumerate(dims)]
    if None in shape:
        raise PipelineError(f"input {model.graph.input[0].name} has symbolic non-batch dimensions {shape}; "
                            f"export the model with a fixed image size")
    return shape


def random_batches(n: int = 4, shape: tuple = (8, 3, 32, 32), seed: int = 0) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen).numpy() for _ in range(n)]


def equivalence(original: onnx.ModelProto, modified: onnx.ModelProto, batches: list,
                atol: float = EQUIVALENCE_ATOL) -> dict:
    """Run both graphs on the same inputs (no graph optimizations) and compare their logits."""
    a = ort_logits(ort_session(original), batches)
    b = ort_logits(ort_session(modified), batches)
    return {**compare(a, b, atol), "samples": int(a.shape[0])}


def ort_accuracy(model: Union[Path, onnx.ModelProto], split: Split, batch_size: int = 500,
                 optimize: bool = True) -> tuple[float, np.ndarray]:
    """Top-1 accuracy of an ONNX model on `split`, and its logits (the backends' one evaluation loop)."""
    from ..runtime.backends import OnnxBackend, evaluate

    result = evaluate(OnnxBackend(model, optimize=optimize), split, batch_size)
    return result.accuracy, result.logits


def error_ratio(fp32: onnx.ModelProto, exact: onnx.ModelProto, fast: onnx.ModelProto, batches: list,
                bound: float = FAST_ERROR_RATIO) -> dict:
    """Mean abs logit error against the FP32 model of the fast and the exact INT8 graphs on the same inputs."""
    ref = ort_logits(ort_session(fp32), batches).astype(np.float64)
    exact_err, fast_err = (float(np.abs(ort_logits(ort_session(m), batches) - ref).mean()) for m in (exact, fast))
    ratio = fast_err / exact_err if exact_err > 0 else (0.0 if fast_err == 0 else float("inf"))
    return {"fast_error": fast_err, "exact_error": exact_err, "ratio": ratio, "bound": bound, "ok": ratio <= bound,
            "samples": int(ref.shape[0])}
