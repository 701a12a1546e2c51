"""The whole chain as one call: fusable FP32 eager model + calibration batches -> verified TensorRT-ready ONNX.

    from eager2trt.pipeline import quantize_to_tensorrt
    result = quantize_to_tensorrt(model, calibration_batches, "out/")
    result.paths.int8_onnx_modified        # hand this to trtexec

Fuse (checked against the unfused model), quantize in eager mode (calibrated), export FP32/INT8 ONNX and
INT8 TorchScript, rewrite the Q/DQ graph for TensorRT, lint it, and prove it computes the export's logits.
The CLIs, the benchmarks and the tests all go through here.
"""

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import onnx
import torch

from .artifacts import ensure_writable_dir, save_onnx
from .contract import EQUIVALENCE_ATOL, ArtifactPaths
from .errors import PipelineError
from .eager.export import export_onnx, export_torchscript
from .checks.agreement import check_agreement
from .graph.lint import lint
from .eager.model import fuse
from .eager.engines import DEFAULT_ENGINE
from .eager.quantize import quantize
from .graph.onnx_utils import load_onnx
from .graph.placement import make_fast, with_high_precision
from .graph.surgery import make_tensorrt_ready
from .checks.compare import equivalence, error_ratio, input_shape, random_batches


@dataclass
class QuantizeConfig:
    """How to quantize: the project's TensorRT-exact scheme by default."""

    activation_dtype: str = "quint8"
    calibration: str = "histogram"
    engine: str = DEFAULT_ENGINE  # onednn: its arithmetic matches the Q/DQ graph (x86/fbgemm drift)


@dataclass
class PipelineResult:
    """What the chain produced and the evidence that each step kept the model's meaning."""

    fp32: torch.nn.Module
    int8: torch.nn.Module
    int8_torchscript: torch.jit.ScriptModule
    paths: ArtifactPaths
    fusion_max_abs_diff: float
    surgery: dict  # rewrite counts, op counts before and after
    lint: dict  # rule -> findings (all empty: the pipeline stops otherwise)
    equivalence: dict  # exact surgery vs the export, on random (and given) inputs
    agreement: dict  # PyTorch INT8 vs its Q/DQ graph (and both vs FP32)
    fast: Optional[dict] = None  # fast placement: rewrite report, lint, error ratio (when asked for)


def _peek(batches: Iterable[torch.Tensor]) -> tuple[torch.Tensor, Iterable[torch.Tensor]]:
    """The first batch, and an iterable that still yields every batch."""
    it = iter(batches)
    try:
        first = next(it)
    except StopIteration:
        raise PipelineError("no calibration batches were given; pass at least one batch of real inputs") from None
    if not isinstance(first, torch.Tensor) or first.dim() != 4 or not first.is_floating_point():
        raise PipelineError(f"calibration batches must be float NCHW tensors, got "
                            f"{type(first).__name__} {tuple(getattr(first, 'shape', ()))}; pass normalized images")
    return first, itertools.chain([first], it)


def make_tensorrt_ready_file(source: Path, target: Path, check_inputs: Optional[list] = None,
                             atol: float = EQUIVALENCE_ATOL) -> tuple[onnx.ModelProto, dict, dict, dict]:
    """Exact surgery on an INT8 ONNX file, lint, equivalence on random (+ given) inputs, atomic write."""
    original = load_onnx(source)
    ready, report = make_tensorrt_ready(original)
    findings = _lint_or_raise(ready)
    batches = random_batches(n=2, shape=input_shape(original, batch_size=4)) + list(check_inputs or [])
    eq = equivalence(original, ready, batches, atol=atol)
    if not eq["ok"]:
        raise PipelineError(f"the rewritten graph deviates from the export by {eq['max_abs_diff']:.3g} (> {atol:g}); "
                            f"it is not the same model")
    save_onnx(ready, target)
    return ready, report, findings, eq


def _lint_or_raise(model: onnx.ModelProto, level: Optional[str] = None) -> dict:
    """Every rule's findings; one sentence naming the first broken rule and node otherwise."""
    findings = lint(model, level) if level else lint(model)
    failed = {rule: f for rule, f in findings.items() if any(x.level == "error" for x in f)}
    if failed:
        rule, f = next(iter(failed.items()))
        raise PipelineError(f"the rewritten graph breaks TensorRT's rule {rule} at {f[0].node} ({f[0].message}) "
                            f"and {sum(map(len, failed.values())) - 1} more places; the surgery does not handle "
                            f"this graph yet")
    return findings


def make_fast_file(source: Path, fp32_onnx: Path, target: Path, high_precision: str = "fp32",
                   batches: Optional[list] = None) -> dict:
    """Fast placement on an INT8 ONNX file, linted with the performance rules as errors, its logit error vs
    FP32 held within FAST_ERROR_RATIO of the exact graph's on `batches` (random by default); atomic write."""
    original = load_onnx(source)
    fast32, report = make_fast(original)
    fast = with_high_precision(fast32, report, high_precision)
    findings = _lint_or_raise(fast, "error")
    batches = batches or random_batches(n=2, shape=input_shape(original, batch_size=8))
    ratio = error_ratio(load_onnx(fp32_onnx), original, fast, batches)
    if not ratio["ok"]:
        raise PipelineError(f"the fast graph's error against FP32 is {ratio['ratio']:.2f}x the exact graph's "
                            f"(bound {ratio['bound']:g}x); use the exact graph for this model")
    save_onnx(fast, target)
    return {"report": report, "lint": findings, "error_ratio": ratio}


def quantize_to_tensorrt(fp32: torch.nn.Module, calibration_batches: Iterable[torch.Tensor], output_dir: Path,
                         config: Optional[QuantizeConfig] = None, check_inputs: Optional[list] = None,
                         agreement_inputs: Optional[list] = None, fast: Optional[str] = None) -> PipelineResult:
    """Fuse, quantize, export and make TensorRT-ready, verifying each step; write every artifact to output_dir.

    `fp32` needs torchvision's quantizable-model contract: QuantStub/DeQuantStub around forward, FloatFunctional
    for additions, and a `fuse_model()` method (see README, "Bring your own model"). `check_inputs` are extra
    float32 numpy batches (e.g. real test images) the equivalence check also runs on. `agreement_inputs` are
    real float NCHW batches for the PyTorch-INT8-vs-graph agreement check (else it runs on random inputs,
    held to a tighter bound). `fast` ("fp32" or "fp16" high precision) also writes the fast-placement graph.
    """
    config = config or QuantizeConfig()
    paths = ArtifactPaths(ensure_writable_dir(output_dir))
    example, calibration_batches = _peek(calibration_batches)
    fp32 = fp32.eval().cpu()
    fused, fuse_err = fuse(fp32, input_shape=tuple(example.shape[1:]))
    int8 = quantize(fused, calibration_batches, config.activation_dtype, config.calibration, config.engine)
    export_onnx(fp32, paths.fp32_onnx, example=example)
    export_onnx(int8, paths.int8_onnx, example=example)
    int8_ts = export_torchscript(int8, paths.int8_torchscript, example=example)
    _, report, findings, eq = make_tensorrt_ready_file(paths.int8_onnx, paths.int8_onnx_modified, check_inputs)
    real = agreement_inputs is not None
    inputs = agreement_inputs if real else [torch.randn(example.shape, generator=torch.Generator().manual_seed(i))
                                            for i in range(4)]
    agreement = check_agreement(int8, paths.int8_onnx, fp32, inputs, real=real)
    fast_result = make_fast_file(paths.int8_onnx, paths.fp32_onnx, paths.int8_onnx_fast, fast) if fast else None
    return PipelineResult(fp32=fp32, int8=int8, int8_torchscript=int8_ts, paths=paths, fusion_max_abs_diff=fuse_err,
                          surgery=report, lint=findings, equivalence=eq, agreement=agreement, fast=fast_result)
