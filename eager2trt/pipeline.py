"""The one place that decides what runs and what must pass: FP32 eager model -> verified TensorRT-ready ONNX.

    from eager2trt.pipeline import quantize_to_tensorrt
    result = quantize_to_tensorrt(model, calibration_batches, "out/", images=test_images, labels=test_labels)
    result.paths.int8_onnx_modified        # hand this to trtexec (exact graph); result.paths.int8_onnx_fast (fast)

Fuse (checked against the unfused model), quantize in eager mode (calibrated), export FP32/INT8 ONNX and INT8
TorchScript, rewrite the Q/DQ graph for TensorRT (exact and fast placement), lint it, and prove it: every
model runs on each batch of each input set (random, and the caller's held-out data, streamed) once, in
lockstep (runtime.backends.run_together), and every check (checks/*) reads the running statistics of that
pass (checks/tally.py), per output. What a failed check does is checks/policy.py's; graphs are written only
after their checks pass. The CLIs parse arguments, call into here, print the
result's checks and exit.

With `fallback=True` a run whose INT8 is outside the accuracy budget does not stop there: the fewest layers are
kept in float (graph/fallback.py, chosen on held-out training images) and that graph is held to FP32 instead.
With `int8=` an already converted INT8 model (e.g. from QAT, eager/qat.py) replaces calibration.
"""

import copy
import functools
import math
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import onnx
import torch

from . import contract
from .artifacts import ensure_writable_dir, fresh_run, save_onnx
from .checks import compare, policy
from .checks.agreement import agreement, scale_provenance
from .checks.result import Check, CheckFailed, require, require_all
from .checks.rules import lint_checks
from .contract import ArtifactPaths
from .eager.calibration import DEFAULT_PERCENTILE
from .eager.engines import AUTO
from .eager.export import export_onnx, export_torchscript
from .eager.model import fuse
from .eager.quantize import quantize
from .eager.requantize import MEASURE_IMAGES, to_project_scheme
from .errors import PipelineError
from .graph.sensitivity import restore_float_biases
from .graph.lint import lint, performance_summary
from .graph.onnx_utils import load_onnx
from .graph.placement import make_fast, with_high_precision
from .heldout import HeldOut, held_out
from .inputs import check_batches, check_int8_model, check_pipeline_arguments
from .graph.surgery import ExactRefused, make_tensorrt_ready
from .runtime.backends import OnnxRunner, PyTorchRunner, graph_runner, run_together
from .checks.tally import Score
from .runtime.inputs import as_args, as_outputs, forward_names, head, onnx_input_shape, peek, random_batches, rows

MODES = ("exact", "fast")
USE_EXACT = "use the exact graph for this model"  # the fast graph's defect fix, kept where the exact graph passes


@dataclass
class QuantizeConfig:
    """How to quantize: the project's TensorRT-exact scheme by default."""

    activation_dtype: str = "quint8"
    # percentile needs no labels and was best or within 0.2 points of the best on every model measured but ResNet50
    # (docs/quantization.md, "Calibration"); auto (needs holdout) is what the CIFAR-10 jobs use
    calibration: str = "percentile"
    engine: str = AUTO  # the first engine whose arithmetic matches the Q/DQ graph on this machine (eager/engines.py)
    percentile: float = DEFAULT_PERCENTILE  # for calibration "percentile" (and the percentile candidate of "auto")


# (candidate, reference) output pairs every run tallies (checks/tally.py); a pair whose models a run lacks is skipped
PAIRS = (("int8", "export"), ("int8", "fp32"), ("export", "fp32"), ("exact", "export"), ("exact", "fp32"),
         ("fast", "fp32"), ("fast", "export"), ("pytorch", "export"), ("exact", "exact_cpu"), ("fast", "fast_cpu"))
# on a GPU, what runs on the CPU only on the first `sample` held-out samples: PyTorch INT8 (its quantized engines
# are CPU-only) and the graphs in onnxruntime, the CPU check the GPU's arithmetic is held to (check gpu_vs_cpu)
CPU_SAMPLED = ("int8", "exact_cpu", "fast_cpu")
GPU_SAMPLE = 1000  # held-out samples of that sample by default


@dataclass
class Inputs:
    """The input sets every model is run on: seeded random batches, and optionally held-out real data (labelled or
    not, heldout.HeldOut: read again on every pass, never kept); `metric` scores outputs against labels."""

    random: list
    real: Optional[HeldOut] = None
    metric: Optional[Callable] = None
    device: str = "cpu"  # where FP32 and the graphs run ("cuda": PyTorch, runtime/torch_graph.py)
    sample: int = 0  # on a GPU, the held-out samples CPU_SAMPLED run on

    @property
    def on_gpu(self) -> bool:
        return str(self.device) != "cpu"

    @property
    def labelled(self) -> bool:
        return self.real is not None and self.real.labelled

    def sets(self) -> dict:
        return {"random": [(b, None) for b in self.random], **({"real": self.real} if self.real is not None else {})}

    def measure(self, runners: dict) -> dict:
        """Every runner on every input set in lockstep: input set -> Tally of PAIRS and labelled scores."""
        sampled = CPU_SAMPLED if self.on_gpu else ()
        return {k: run_together(runners, v, PAIRS, self.metric, desc=f"{', '.join(runners)} ({k})", sampled=sampled,
                                sample=self.sample) for k, v in self.sets().items()}


@dataclass
class Graph:
    """One TensorRT-ready graph: where it was written (None: refused or failed), why not, what changed, its checks."""

    mode: str
    high_precision: str = "fp32"
    path: Optional[Path] = None
    refused: Optional[str] = None
    refused_kind: Optional[str] = None  # the exact rewrite's ExactRefused.kind (e.g. "fixed-qparams"), when refused
    report: dict = field(default_factory=dict)
    performance: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)
    accuracy: Optional[float] = None
    model: Optional[onnx.ModelProto] = field(default=None, repr=False)

    def record(self) -> dict:
        return {"mode": self.mode, "high_precision": self.high_precision, "output": str(self.path) if self.path else None,
                "refused": self.refused, "refused_kind": self.refused_kind, **self.report, "performance": self.performance, "accuracy": self.accuracy,
                "checks": {c.name: c.as_dict() for c in self.checks}}


@dataclass
class PipelineResult:
    """What the chain produced, the evidence (every check, in order) and the accuracies on labelled images."""

    fp32: torch.nn.Module
    int8: torch.nn.Module
    int8_torchscript: torch.jit.ScriptModule
    paths: ArtifactPaths
    engine: str
    graphs: dict
    checks: list
    accuracy: dict  # fp32, int8, exact, fast: top-1 (or the metric) on the labelled images (empty without labels)
    tallies: dict = field(default_factory=dict, repr=False)  # input set -> checks.tally.Tally (every model's stats)
    device: str = "cpu"  # where FP32 and the graphs were evaluated
    int8_samples: Optional[int] = None  # held-out samples PyTorch INT8 ran on (all of them on the CPU)
    notes: list = field(default_factory=list)  # what was not checked, and why
    failure: Optional[Check] = None  # the check that failed the run (checks/policy.py), raised as CheckFailed

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    @property
    def fusion_max_abs_diff(self) -> float:
        return self.check("fusion").value

    @property
    def scores(self) -> dict:
        """Each model's labelled figures (top-1, mIoU for label maps, the metric) on the held-out data."""
        real = self.tallies.get("real")
        return {k: v.figures() for k, v in real.scores.items()} if real is not None else {}


def fusion_check(fp32: torch.nn.Module, image_shape) -> tuple[torch.nn.Module, Check]:
    """The fused model (conv+bn+relu) and the check that it computes what the unfused one does."""
    fused, max_abs = fuse(fp32, input_shape=image_shape)  # raises with its sentence beyond the tolerance
    return fused, Check("fusion", max_abs, f"allclose rtol {contract.FUSE_RTOL:g} atol {contract.FUSE_ATOL:g}", True,
                        detail="fused vs unfused FP32 model, max abs difference on 4 random inputs")


def make_graph(export: onnx.ModelProto, mode: str, high_precision: str = "fp32", allow_fp32: bool = False,
               fp32: Optional[onnx.ModelProto] = None) -> Graph:
    """Rewrite an INT8 export into the exact or fast TensorRT-ready graph; a refused rewrite is recorded, not raised.
    With the FP32 ONNX `fp32`, the fast graph's biases are its unrounded values
    (graph/sensitivity.restore_float_biases)."""
    graph = Graph(mode, high_precision)
    try:
        if mode == "exact":
            graph.model, graph.report = make_tensorrt_ready(export, allow_fp32=allow_fp32)
        else:
            fast32, graph.report = make_fast(export, allow_fp32=allow_fp32)
            if fp32 is not None:
                fast32, graph.report["rewrites"]["float_biases"] = restore_float_biases(fast32, fp32)
            graph.model = with_high_precision(fast32, graph.report, high_precision)
    except ExactRefused as exc:
        graph.refused, graph.refused_kind = str(exc), exc.kind
        return graph
    except PipelineError as exc:
        graph.refused = str(exc)
        return graph
    graph.performance = performance_summary(graph.model)
    return graph


def graph_runners(graphs: dict, device: str = "cpu") -> dict:
    """Runners of the graphs that were made (the graph as written), by mode: onnxruntime on the CPU, PyTorch on a
    GPU with the same arithmetic, then each graph's onnxruntime twin as MODE_cpu (runtime.backends.graph_runner)."""
    made = [g for g in graphs.values() if g.model is not None]
    runners = {g.mode: graph_runner(g.model, device) for g in made}
    if str(device) != "cpu":
        runners.update({f"{g.mode}_cpu": OnnxRunner(g.model) for g in made})
    return runners


def per_output(tally, candidate: str, reference: str, check: Callable, *others: tuple) -> Check:
    """`check` on each output's Stats of candidate vs reference (and of each further (candidate, reference) pair),
    joined into one check over every output (compare.each_output)."""
    stats = [tally.pair(candidate, reference), *(tally.pair(*o) for o in others)]
    return compare.each_output([check(*s) for s in zip(*stats)], tally.output_names or
                               [f"output{i}" for i in range(len(stats[0]))])


def check_exact(graph: Graph, tallies: dict, atol: float = contract.EQUIVALENCE_ATOL) -> None:
    """Lint (performance rules as warnings) and bit-equivalence with the export, every output, every input set."""
    graph.checks = lint_checks(lint(graph.model, performance="warning"))
    both = functools.reduce(lambda a, b: a.merged(b), tallies.values())
    graph.checks.append(per_output(both, graph.mode, "export", lambda s: compare.equivalence(s, atol)))


def check_fast(graph: Graph, tallies: dict, inputs: Inputs, reference: Optional[tuple] = None) -> None:
    """Lint with the performance rules as errors, and the placement's defect check: the fast graph's error against
    FP32 within FAST_ERROR_RATIO of the export's, every output (real images when given, else the random inputs).
    With labelled images and the PyTorch INT8 `reference` (accuracy, name), top-1 against it is recorded
    (fast_accuracy, policy RECORD): the fast graph carries the unrounded FP32 biases PyTorch INT8 rounds, so it
    is another function and a difference proves no defect; it is held to FP32 by its accuracy guard instead."""
    graph.checks = lint_checks(lint(graph.model, performance="error"), fix=USE_EXACT)
    tally = tallies.get("real", tallies["random"])
    if ("export", "fp32") in tally.stats:
        graph.checks.append(per_output(tally, "export", "fp32", compare.error_ratio, (graph.mode, "fp32")))
    if inputs.labelled and reference is not None:
        real = tallies["real"].same_samples  # PyTorch INT8's samples
        graph.checks.append(compare.accuracy_recorded("fast_accuracy", score(real, graph.mode), real.samples,
                                                      *reference, agreement=real.pair(graph.mode, "export")[0].agreement))


def score(tally, model: str) -> float:
    """`model`'s figure on labelled data: the run's metric when given, else top-1 (per pixel for label maps)."""
    return tally.scores[model].value()


def accuracy_guard(name: str, accuracy: float, fp32_accuracy: float, budget: float, what: str) -> Check:
    """INT8 top-1 (or the run's metric) no more than `budget` points below FP32 on held-out labelled images."""
    return Check(name, accuracy, f">= {fp32_accuracy - budget / 100:.4f}", accuracy >= fp32_accuracy - budget / 100 - 1e-9,
                 detail=f"{what} vs FP32 {fp32_accuracy:.4f} on held-out images, budget {budget:g} points",
                 fix="INT8 loses more accuracy than the budget allows; try another calibration (e.g. percentile or "
                     "entropy, or calibrate on fewer images), or run eager2trt-sensitivity on the INT8 ONNX to find "
                     "the layers that lose it",
                 figures={"accuracy": accuracy, "fp32_accuracy": fp32_accuracy, "budget_points": budget})


def write_graph(graph: Graph, path: Path) -> None:
    """Write a graph whose checks all passed (atomic, onnx.checker and an onnxruntime load first)."""
    save_onnx(graph.model, path)
    graph.path = Path(path)


def quantize_to_tensorrt(fp32: torch.nn.Module, calibration_batches: Iterable, output_dir: Path,
                         config: Optional[QuantizeConfig] = None, *, images: Optional[list] = None,
                         labels: Optional[torch.Tensor] = None, data: Optional[Iterable] = None,
                         metric: Optional[Callable] = None, fast: Optional[str] = "fp32",
                         accuracy_budget: float = contract.ACCURACY_BUDGET,
                         holdout: Optional[tuple] = None, fallback: bool = False,
                         int8: Optional[torch.nn.Module] = None,
                         float_twin: Optional[torch.nn.Module] = None, name: Optional[str] = None,
                         device: str = "cpu", sample: int = GPU_SAMPLE) -> PipelineResult:
    """Fuse, quantize, export and make TensorRT-ready, verifying each step; write every artifact to output_dir
    (named for `name`: N.onnx, N_quantized.onnx, N_quantized_modified.onnx, ...; None: the reference's names,
    contract.artifact_names).

    `fp32` needs torchvision's quantizable-model contract: QuantStub/DeQuantStub around forward, FloatFunctional
    for additions, and a `fuse_model()` method (docs/bring_your_own_model.md). It may take several inputs (a batch
    is then a tuple of tensors, or a dict keyed by forward()'s parameter names) and return several outputs (a
    tuple or dict: named graph outputs); every check covers every output. `images` are real float NCHW batches
    held out from calibration (e.g. the test set): with them PyTorch INT8 is compared with its graph on real data
    (argmax agreement) and equivalence covers them too; with `labels` as well (one per sample, or one label map
    per sample for segmentation: per-pixel top-1 and mIoU), every model's top-1 is measured and INT8 must stay
    within `accuracy_budget` points of FP32 (the accuracy guard). `data` instead of images and labels: any
    re-iterable of (inputs, labels) pairs, e.g. a torch DataLoader; nothing of it is kept (each pass reads it
    again, checks read running statistics: memory does not grow with its size). `metric(outputs, labels)` -> a
    float, higher is better (e.g. a detector's or an embedding's own figure; `outputs` a list of tensors): what
    the guards hold instead of top-1, averaged over samples. Without labels accuracy is not checked (the result
    says so; the outputs' error against FP32 is).
    `fast` ("fp32" or "fp16" high precision, None for none) also writes the fast-placement graph. `holdout` =
    (batches, labels) of training images not used for calibration: what calibration "auto" chooses on, and what
    the fallback chooses its layers on.

    `fallback=True` (needs `images`, `labels` and `holdout`): no accuracy guard stops the run before the fallback
    has been tried (checks/policy.py). The exact and fast graphs are made, checked and written as usual; if none
    is within the budget, the automatic mixed precision of eager2trt-sensitivity --fallback runs on the INT8
    export with the unrounded float biases (the fast graph's): every layer ranked (leave-one-out, alone in float)
    and the fewest kept in float that bring the graph within `accuracy_budget` points of the FP32 ONNX, all
    measured on `holdout` (training images), never on `images`. That graph is made TensorRT-ready, linted,
    evaluated on `images` and held to FP32 within the budget (check fallback_graph_accuracy), then written to
    the fallback artifact (graph "fallback" in the result). The failed guards of PyTorch INT8 and the other graphs
    stay in result.checks (failed, recorded). No set of layers reaching the budget raises CheckFailed naming the
    layers tried.

    A run that fails (CheckFailed) still writes the graphs that passed their checks; the sentence names them and
    the exception's `result` holds every check.

    `int8`: an already converted INT8 eager model of `fp32` (e.g. eager2trt.eager.qat.quantize_qat's), used
    instead of calibrating. It must have been converted for the current quantized engine
    (torch.backends.quantized.engine, as quantize_qat leaves it). A model in a symmetric scheme (activations quint8
    zero point 128, weights zero point 0) is used as is; one with affine activations (torch.ao's default x86,
    fbgemm, qnnpack qconfigs) is re-derived in the project's scheme from its float twin, each activation's range
    taken from what `int8` produces on `calibration_batches` (eager/requantize.py), and the check `requantization`
    holds its logit distance to FP32 (on `images`, else calibration images) within
    contract.REQUANTIZATION_RATIO_MAX of the given model's. Everything after (export, agreement, graphs, guard)
    then runs on the model used.

    `device` "cuda" (or "cuda:N", "auto": CUDA where there is one): FP32 and every graph are evaluated on the GPU,
    the graphs by PyTorch with onnxruntime's Q/DQ arithmetic (runtime/torch_graph.py). PyTorch INT8 stays on the
    CPU (its quantized engines run nowhere else) and runs on the first `sample` held-out samples, as does each
    graph in onnxruntime on the CPU: check gpu_vs_cpu holds the GPU's results to the CPU's there, and the INT8
    checks compare it with FP32 on those samples (result.int8_samples says how many).

    `float_twin`: the float model `int8` was converted from, when that is not `fp32` (quantize_qat's
    float_model: fine-tuning moved the weights); the fast and fallback graphs take their unrounded biases from
    it (graph/sensitivity.restore_float_biases), not from `fp32`. FP32 stays the accuracy reference.
    """
    config = config or QuantizeConfig()
    calibration_batches, images = check_pipeline_arguments(fp32, calibration_batches, config, images, labels, fast)
    if int8 is not None:
        check_int8_model(int8)
    if metric is not None and not callable(metric):
        raise PipelineError(f"metric is a {type(metric).__name__}; pass a function metric(outputs, labels) -> float "
                            f"(higher is better), or leave it out for top-1")
    if not isinstance(accuracy_budget, (int, float)) or not math.isfinite(accuracy_budget) or accuracy_budget < 0:
        raise PipelineError(f"accuracy_budget is {accuracy_budget!r}; pass a finite number of points, 0 or more "
                            f"(default {contract.ACCURACY_BUDGET:g})")
    if float_twin is not None and (int8 is None or not isinstance(float_twin, torch.nn.Module)):
        raise PipelineError("float_twin is the float model an int8= model was converted from (quantize_qat's "
                            "float_model); pass it together with int8=, or leave it out")
    device = resolve_device(device)
    if not isinstance(sample, int) or isinstance(sample, bool) or sample < 1:
        raise PipelineError(f"sample is {sample!r}; pass the number of held-out samples PyTorch INT8 and the CPU "
                            f"graphs run on beside a GPU, 1 or more (default {GPU_SAMPLE})")
    example, calibration_batches = peek(calibration_batches, "calibration_batches")
    shape = input_shapes(fp32, example)
    real = held_out(images, labels, data, fp32, shape)
    check_held_out(fp32, real, metric, fallback)
    holdout_arrays = _check_fallback_arguments(fp32, holdout, real, images, shape) if fallback else None
    paths = ArtifactPaths(ensure_writable_dir(output_dir, "output_dir"), name)
    done = []  # the finished run's result; a failed one keeps the earlier run's files aside (fresh_run)
    with fresh_run(paths.output_dir, paths.run_artifacts(), keep_previous=lambda: done[0].failure is not None):
        done.append(_quantize_to_tensorrt(fp32, calibration_batches, example, paths, config,
                                          Inputs(random_inputs(shape), real, metric, device, sample), fast,
                                          accuracy_budget, holdout, holdout_arrays, int8, float_twin))
    result = done[0]
    if result.failure is not None:
        raise run_failed(result)
    return result


def resolve_device(device: str, what: str = "device is") -> str:
    """"cpu", or a CUDA device that exists ("auto": CUDA where there is one); one sentence otherwise."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise PipelineError(f"{what} {device!r}; pass cpu, cuda (or cuda:N) or auto")
    if kind == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"{what} {device!r} but PyTorch sees no CUDA GPU here; pass cpu (or auto)")
    return str(device)


def check_held_out(fp32: torch.nn.Module, real: Optional[HeldOut], metric: Optional[Callable],
                   fallback: bool) -> None:
    """The held-out data's first batch against the FP32 model, before anything is written: the batch itself
    (checked as it is read), its labels against the first output (shape, values), the metric once, and what the
    fallback needs (one classifier output, one label per image). Later batches are checked as they come."""
    if metric is not None and (real is None or not real.labelled):
        raise PipelineError("metric= scores outputs against labels; pass labels= (or data=) with it, or leave "
                            "metric out")
    if real is None:
        return
    batch, labels = real.first()
    n = PREFLIGHT_SAMPLES if isinstance(labels, (torch.Tensor, np.ndarray, list, tuple)) or labels is None \
        else rows(batch)
    outputs = _fp32_outputs(fp32, head(batch, n))
    if labels is not None:
        Score().add(outputs, labels[:n], metric)
    maps = labels is not None and np.ndim(labels) > 1 if isinstance(labels, (torch.Tensor, np.ndarray)) else False
    if fallback and (len(outputs) > 1 or maps):
        raise PipelineError(f"fallback=True ranks layers by per-image top-1 of one classifier output, and this model "
                            f"has {len(outputs)} output(s) with {'label maps' if maps else 'labels'} of shape "
                            f"{tuple(np.shape(labels))}; run without fallback (every output is still checked)")


PREFLIGHT_SAMPLES = 8  # samples of the first held-out batch the model and labels are checked on before writing


def _fp32_outputs(fp32: torch.nn.Module, batch) -> list:
    """The FP32 model's outputs on a checked batch as arrays, each a tensor keeping the batch dimension."""
    from .eager.model import check_outputs

    args = as_args(batch)
    with torch.no_grad():
        try:
            out = as_outputs(fp32.eval()(*args))
        except RuntimeError as exc:
            raise PipelineError(f"the FP32 model cannot run the held-out data's first batch "
                                f"({str(exc).splitlines()[0][:120]}); pass inputs of the size the model was built "
                                f"for") from None
    check_outputs(out, len(args[0]))
    return [o.float().numpy() for o in out]


def run_failed(result: "PipelineResult") -> CheckFailed:
    """The error of a run that finished with a failed check: its sentence, then what is on disk; the result rides
    along (exc.result) so a caller can still read every check and the graphs that were written."""
    exc = CheckFailed(replace(result.failure, fix=f"{result.failure.fix}; {on_disk(result)}".lstrip("; ")))
    exc.result = result
    return exc


def input_shapes(model: torch.nn.Module, example):
    """One input's CHW, or a tuple of each input's for a model with several (what fuse() and the checks take)."""
    args = as_args(example, forward_names(model))
    return tuple(args[0].shape[1:]) if len(args) == 1 else tuple(tuple(x.shape[1:]) for x in args)


def random_inputs(shape, batch: int = 8, n: int = 4) -> list:
    """The seeded random input set: `n` batches of `batch` samples of input_shapes' `shape`."""
    several = bool(shape) and isinstance(shape[0], tuple)
    return random_batches([(batch, *s) for s in shape] if several else (batch, *shape), n=n)


def _quantize_to_tensorrt(fp32, calibration_batches, example, paths, config, inputs: Inputs, fast, accuracy_budget,
                          holdout, holdout_arrays=None, int8=None, float_twin=None) -> PipelineResult:
    fp32 = fp32.eval().cpu()
    fused, fusion = fusion_check(fp32, input_shapes(fp32, example))
    given_int8 = int8 is not None
    requantization = []  # a given int8's check: re-derived in the symmetric scheme, or used as is
    if int8 is None:
        int8 = quantize(fused, calibration_batches, config.activation_dtype, config.calibration, config.engine,
                        config.percentile, holdout)
    else:
        measured = inputs.real.sample(MEASURE_IMAGES)[0] if inputs.real is not None else None
        int8, check = to_project_scheme(int8.eval(), fused, calibration_batches, example, measured, config.engine,
                                        float_twin)
        requantization = [check]
    engine = torch.backends.quantized.engine
    export_onnx(fp32, paths.fp32_onnx, example=example)
    export_onnx(int8, paths.int8_onnx, example=example)
    int8_ts = export_torchscript(int8, paths.int8_torchscript, example=example)
    export, fp32_onnx = load_onnx(paths.int8_onnx), load_onnx(paths.fp32_onnx)

    # the float ONNX whose unrounded biases the fast and fallback graphs carry
    biases = fp32_onnx if float_twin is None else _twin_onnx(float_twin, example)
    graphs = {"exact": make_graph(export, "exact")}
    if fast:
        graphs["fast"] = make_graph(export, "fast", fast, fp32=biases)
    tallies = inputs.measure(_runners(fp32, int8, export, graphs, inputs.device))
    names = [o.name for o in export.graph.output]
    for t in tallies.values():
        t.output_names = names
        if t.sample is not None:
            t.sample.output_names = names
    on = tallies.get("real", tallies["random"])
    same = on.same_samples  # where PyTorch INT8 ran on a sample only (beside a GPU), the others on that sample
    real = inputs.real is not None
    checks = [fusion, *requantization,
              per_output(same, "int8", "export", lambda a, b, c: agreement(a, b, c, real=real, engine=engine),
                         ("int8", "fp32"), ("export", "fp32")),
              scale_provenance(int8, export)]
    require_all(policy.failed(checks, policy.DEFECT))  # the model itself is wrong: nothing after this can help
    accuracy = {}
    if inputs.labelled:
        accuracy = {"fp32": score(on, "fp32"), "int8": score(same, "int8")}
        checks.append(accuracy_guard("int8_accuracy", accuracy["int8"], score(same, "fp32"), accuracy_budget,
                                     f"PyTorch INT8 ({engine} engine)" + _sample_words(same, on)))
    notes = [] if inputs.labelled else [_accuracy_not_checked(on, "real" if real else "random")]
    notes += _island_notes(int8)

    reference = (accuracy["int8"], f"PyTorch INT8 ({engine})") if accuracy else None
    for g in graphs.values():
        if g.model is None:
            continue
        if g.mode == "exact":
            check_exact(g, tallies)
        else:
            check_fast(g, tallies, inputs, reference)
        if inputs.on_gpu:
            g.checks.append(per_output(same, g.mode, f"{g.mode}_cpu", compare.gpu_matches_cpu, (g.mode, "fp32")))
        g.checks.append(per_output(on, g.mode, "fp32", lambda s, m=g.mode: compare.distance_recorded(
            f"{m}_vs_fp32", s, f"the {m} graph")))
        if inputs.labelled:
            g.accuracy = accuracy[g.mode] = score(on, g.mode)
            g.checks.append(accuracy_guard(f"{g.mode}_graph_accuracy", g.accuracy, accuracy["fp32"], accuracy_budget,
                                           f"the {g.mode} graph"))
    fallback = holdout_arrays is not None
    if fallback and not any(_deployable(g) for g in graphs.values()):
        graphs["fallback"] = fallback_graph(export, fp32_onnx, holdout_arrays, inputs, accuracy["fp32"],
                                            accuracy_budget, biases)
        accuracy["fallback"] = graphs["fallback"].accuracy
    for g in graphs.values():
        if _writable(g, fallback):
            write_graph(g, {"exact": paths.int8_onnx_modified, "fast": paths.int8_onnx_fast,
                            "fallback": paths.int8_onnx_fallback}[g.mode])
    result = PipelineResult(fp32=fp32, int8=int8, int8_torchscript=int8_ts, paths=paths, engine=engine,
                            graphs=graphs, checks=checks + [c for g in graphs.values() for c in g.checks],
                            accuracy=accuracy, tallies=tallies, device=str(inputs.device),
                            int8_samples=same.samples if inputs.labelled or real else None,
                            notes=notes + [f"{g.mode} graph not made: {g.refused}" for g in graphs.values()
                                           if g.refused])
    result.failure = _advised(_decide(result, fallback), result)
    if result.failure is not None and result.failure.name == "int8_accuracy":
        result.failure = _name_worst_layers(result.failure, export, fp32_onnx, inputs.real, given_int8=given_int8,
                                            int8_onnx=paths.int8_onnx.name)
    result.notes += _recorded(result)
    return result


def _runners(fp32, int8, export: onnx.ModelProto, graphs: dict, device: str) -> dict:
    """Every model a run compares: FP32 and the graphs on `device`, PyTorch INT8 on the CPU (its engines' only
    device), and beside a GPU each graph's onnxruntime twin (graph_runners)."""
    on_gpu = str(device) != "cpu"
    return {"fp32": PyTorchRunner(copy.deepcopy(fp32) if on_gpu else fp32, device=device),
            "int8": PyTorchRunner(int8), "export": graph_runner(export, device), **graph_runners(graphs, device)}


def _sample_words(same, on) -> str:
    """How many held-out samples PyTorch INT8 ran on, where it ran on a sample only."""
    return f", on the first {same.samples} of {on.samples} samples (FP32 on the same)" if same is not on else ""


def _deployable(graph: Graph) -> bool:
    """A graph made, free of defects, and within the accuracy budget (or not held to one: no labels)."""
    return graph.model is not None and not policy.failed(graph.checks, policy.DEFECT) \
        and not policy.failed(graph.checks, policy.BUDGET)


def _writable(graph: Graph, fallback: bool) -> bool:
    """What goes on disk: every graph free of defects and within the budget; with fallback=True the exact and fast
    graphs outside it too (recorded: the references the fallback graph was searched from)."""
    return graph.model is not None and not policy.failed(graph.checks, policy.DEFECT) \
        and ((fallback and graph.mode != "fallback") or not policy.failed(graph.checks, policy.BUDGET))


def _decide(result: PipelineResult, fallback: bool) -> Optional[Check]:
    """The check that fails the run, or None; the order is checks/policy.py's. A graph's defect fails the run
    (the other graphs were still made and written). Budget misses fail it unless fallback=True and some graph
    on disk is within the budget; then they are recorded."""
    defects = policy.failed(result.checks, policy.DEFECT)
    if defects:
        return defects[0]
    misses = policy.failed(result.checks, policy.BUDGET)
    if not misses or (fallback and any(_deployable(g) for g in result.graphs.values())):
        return None
    fb = result.graphs.get("fallback")
    return policy.failed(fb.checks, policy.BUDGET)[-1] if fb is not None else misses[0]


def _advised(check: Optional[Check], result: PipelineResult) -> Optional[Check]:
    """A failed fast-graph check advises the exact graph only where that graph is within the budget."""
    if check is None or USE_EXACT not in check.fix:
        return check
    exact = result.graphs.get("exact")
    if exact is not None and _deployable(exact):
        return check
    why = exact.refused if exact is not None and exact.refused else "it is outside the accuracy budget too"
    return replace(check, fix=check.fix.replace(USE_EXACT, f"the exact graph does not help ({why}): run with "
                                                           f"fallback=True (resnet_torch.py --fallback) or QAT"))


def _recorded(result: PipelineResult) -> list[str]:
    """Notes for the budget misses a passing run recorded instead of raising (fallback=True)."""
    if result.failure is not None:
        return []
    best = next((g for g in reversed(result.graphs.values()) if _deployable(g)), None)
    return [f"{c.name} failed (recorded): outside the accuracy budget; the {best.mode} graph "
            f"({best.path.name if best.path else 'not written'}) is within it"
            for c in policy.failed(result.checks, policy.BUDGET)] if best is not None else []


def on_disk(result: PipelineResult) -> str:
    """Which TensorRT-ready graphs a run left on disk, for the sentence of a failed run."""
    written = [f"the {g.mode} graph ({g.path}, {_within_words(g)})" for g in result.graphs.values() if g.path]
    return "written: " + "; ".join(written) if written else "no TensorRT-ready graph was written"


def _within_words(graph: Graph) -> str:
    if graph.accuracy is None:
        return "accuracy not checked"
    return "within the accuracy budget" if _deployable(graph) else "outside the accuracy budget, recorded"


def _island_notes(int8: torch.nn.Module) -> list[str]:
    """The float islands quantize() made (eager/layers.py), said once: module paths of the float model."""
    islands = getattr(int8, "float_islands", [])
    return [f"float islands (kept in float between Q/DQ, run by TensorRT in high precision): {', '.join(islands)}"] \
        if islands else []


def _twin_onnx(float_twin: torch.nn.Module, example) -> onnx.ModelProto:
    """`float_twin` as ONNX, exported to a temporary file: it is not an artifact of the run."""
    with tempfile.TemporaryDirectory() as tmp:
        return load_onnx(export_onnx(float_twin.eval().cpu(), Path(tmp) / "float_twin.onnx", example=example))


def _check_fallback_arguments(fp32, holdout, real: Optional[HeldOut], images, chw: tuple) -> tuple[list, np.ndarray]:
    """fallback=True's inputs, before anything is written: labelled held-out data to hold the fallback graph to,
    and `holdout` = (batches, labels) of training images to choose its layers on; returns holdout as numpy."""
    if len(forward_names(fp32)) > 1:
        raise PipelineError("fallback=True ranks layers on one input's images, and fp32 takes several inputs; run "
                            "without fallback (every input and output is still checked)")
    if holdout is None:
        raise PipelineError("fallback=True chooses the layers to keep in float on held-out labelled training images; "
                            "pass holdout=(batches, labels) of training images not used for calibration (never the "
                            "test images given as images=, which the fallback graph is then evaluated on)")
    if real is None or not real.labelled:
        raise PipelineError("fallback=True holds the fallback graph to FP32 on labelled held-out images; pass images= "
                            "and labels= (e.g. the test set), or data=, as well as holdout=")
    if not isinstance(holdout, (tuple, list)) or len(holdout) != 2:
        raise PipelineError(f"holdout is a {type(holdout).__name__}; pass holdout=(batches, labels): a list of "
                            f"float32 NCHW batches and their labels")
    batches = [b.numpy() for b in check_batches(list(holdout[0]), "holdout[0]", fp32, chw)]
    held = holdout[1]
    if isinstance(held, (list, tuple)):
        held = torch.cat([torch.as_tensor(y).reshape(-1) for y in held]) if len(held) else torch.zeros(0)
    held = np.asarray(torch.as_tensor(held).cpu()).reshape(-1)
    if len(held) != sum(len(b) for b in batches):
        raise PipelineError(f"holdout has {len(held)} labels for {sum(len(b) for b in batches)} images; pass one "
                            f"label per image")
    if any(b is x for b in holdout[0] for x in images or ()):
        raise PipelineError("holdout shares batches with images; the fallback's layers must be chosen on training "
                            "images, never on the images they are then evaluated on")
    return batches, held


FALLBACK_NAMED = 5  # kept layers a failed fallback's sentence names


def fallback_graph(export: onnx.ModelProto, fp32_onnx: onnx.ModelProto, holdout: tuple, inputs: Inputs,
                   fp32_accuracy: float, budget: float, float_from: Optional[onnx.ModelProto] = None) -> Graph:
    """The fallback graph (graph/fallback.py's search, on `holdout` = (numpy batches, labels) of training images,
    from the export with the unrounded biases of `float_from`, default `fp32_onnx`, whose weights the layers kept
    in float take): checked on holdout (the search's own budget check), linted, then evaluated on `inputs`'
    labelled images and held to FP32 there within `budget` points. Raises CheckFailed when no set of layers
    reaches the budget on holdout."""
    from .graph.fallback import fallback as search
    from .graph.sensitivity import analyze, study

    batches, labels = holdout
    s = study(export, batches, labels, fp32=fp32_onnx, float_from=fp32_onnx if float_from is None else float_from,
              device=inputs.device)
    ranking = analyze(s, alone_quantized=False, data=f"{s.evaluator.images} held-out training images")
    fb = search(s, ranking, budget)
    graph = Graph("fallback", report={"fallback": fb.as_dict()})
    tried = ", ".join(fb.kept[:FALLBACK_NAMED]) + (f" and {len(fb.kept) - FALLBACK_NAMED} more"
                                                   if len(fb.kept) > FALLBACK_NAMED else "")
    searched = replace(
        fb.check(), name="fallback_holdout_accuracy",
        detail=f"{fb.metric} (held-out training images) with {len(fb.kept)} layers kept in float; held to "
               f"{fb.held_to}",
        fix=f"no set of layers from the sensitivity ranking brings the graph within {budget:g} points of FP32 on the "
            f"held-out training images (tried {len(fb.kept)} in float: {tried or 'none'}); " + (
                f"with every layer in float it scores {s.all_float.score:.4f} against {s.reference.score:.4f}, so "
                f"the float weights themselves are outside the budget: for a QAT model, fine-tune longer or at a "
                f"lower learning rate, or raise the budget"
                if s.all_float.score < s.reference.score - budget / 100 else
                "use quantization-aware training (int8=eager2trt.eager.qat.quantize_qat(...); resnet_torch.py "
                "--qat-epochs N), another calibration, or a larger budget"))
    graph.checks = [searched]
    if not searched.passed:
        graph.refused = f"no set of layers reached the budget on the held-out training images ({len(fb.kept)} tried)"
        return graph
    graph.model = fb.model
    graph.performance = performance_summary(fb.model)
    graph.checks = lint_checks(lint(fb.model, performance="warning")) + [searched]
    runner = {"fallback": graph_runner(graph.model, inputs.device)}  # on the GPU without a CPU twin: no sample
    graph.accuracy = score(run_together(runner, inputs.real, [], inputs.metric, desc="fallback graph (real)"),
                           "fallback")
    guard = accuracy_guard("fallback_graph_accuracy", graph.accuracy, fp32_accuracy, budget,
                           f"the fallback graph ({len(fb.kept)} layers kept in float, chosen on held-out training "
                           f"images; held to FP32, not PyTorch INT8)")
    graph.checks.append(replace(guard, fix="the layers chosen on the held-out training images do not hold the budget "
                                           "on these images: hold out more training images, use quantization-aware "
                                           "training (eager2trt.eager.qat; resnet_torch.py --qat-epochs N), or raise "
                                           "the budget"))
    return graph


GUARD_IMAGES = 500  # labelled images the failing accuracy guard's layer ranking runs on (one run per layer)


def _name_worst_layers(check: Check, export: onnx.ModelProto, fp32: onnx.ModelProto, real: HeldOut,
                       given_int8: bool = False, int8_onnx: str = contract.INT8_ONNX) -> Check:
    """The failed accuracy guard, its fix naming the layers that recover most when left alone in float
    (graph/sensitivity.py, leave-one-out on up to GUARD_IMAGES of the held-out images, one input and one output);
    for a given INT8 model (`given_int8`: QAT's, say) the fix is the fallback, since calibration is not this run's."""
    from .graph.sensitivity import worst_layers

    names = []
    single = len(export.graph.input) == 1 and len(export.graph.output) == 1
    if single:
        batches, labels = real.sample(GUARD_IMAGES)
        names = worst_layers(export, [b.numpy() for b in batches], labels.numpy(), fp32=fp32, k=3)
    lost = "INT8 loses more accuracy than the budget allows" + (
        f"; the layers that recover most when left in float are {', '.join(names)}" if names else "")
    if not single:  # the layer ranking and the fallback read one classifier output of one input
        return replace(check, fix=f"{lost}: try calibration='auto' (or percentile, entropy), or QAT "
                                  f"(int8=eager2trt.eager.qat.quantize_qat(...))")
    if given_int8:
        fix = (f"{lost}: for this given INT8 model (int8=, e.g. QAT's) use fallback=True (resnet_torch.py "
               f"--qat-epochs N --fallback): its graph starts from the unrounded float biases TensorRT computes with "
               f"(PyTorch INT8 rounds them to int32) and keeps the fewest layers in float")
    else:
        fix = (f"{lost}: try calibration='auto' (or percentile, entropy), fallback=True (resnet_torch.py --fallback) "
               f"or eager2trt-sensitivity --fallback on {int8_onnx} to keep the fewest layers in float, or QAT "
               f"(int8=eager2trt.eager.qat.quantize_qat(...); resnet_torch.py --qat-epochs N)")
    return replace(check, fix=fix, figures={**check.figures, "worst_layers": names})


def _accuracy_not_checked(tally, inputs: str) -> str:
    """What a run without labels can say instead of accuracy: INT8's error against FP32, each output."""
    rel = ", ".join(f"{s.relative:.3f}" for s in tally.pair("int8", "fp32"))
    return (f"accuracy was not checked (no labels): PyTorch INT8 outputs are {rel} relative distance from FP32 on "
            f"{tally.samples} {inputs} inputs; pass images= and labels= (or data=) of held-out real data to check it")


def graph_chw(model: onnx.ModelProto) -> Optional[tuple]:
    """A one-input graph's input CHW (what held-out batches are checked against); None for several inputs."""
    shape = onnx_input_shape(model)
    return None if isinstance(shape[0], tuple) else tuple(shape[1:])


def rewrite_onnx(source: Path, target: Path, mode: str = "exact", high_precision: str = "fp32",
                 images: Optional[list] = None, labels: Optional[torch.Tensor] = None,
                 fp32_onnx: Optional[Path] = None, reference: Optional[tuple] = None, allow_fp32: bool = False,
                 verify: bool = True, atol: float = contract.EQUIVALENCE_ATOL,
                 data: Optional[Iterable] = None) -> Graph:
    """One INT8 ONNX file -> its exact or fast TensorRT-ready graph, checked as in quantize_to_tensorrt, written.

    Exact: lint and bit-equivalence with `source` on random inputs (+ `images`). Fast: lint with performance rules
    as errors, then top-1 on labelled `images` against `reference` = (a runner of PyTorch INT8, e.g.
    runtime.backends.PyTorchRunner of the INT8 TorchScript, and its name) (default: the source graph's own
    accuracy, which exact mode keeps bit for bit); or, without labels, the logit error against `fp32_onnx` within
    FAST_ERROR_RATIO of the exact graph's; or the lint alone (recorded). With a PyTorch `reference`, the source
    graph must also agree with it (the agreement check on real images). `data`: (images, labels) pairs instead of
    `images` and `labels`, read on each pass (heldout.py).
    """
    if mode not in MODES:
        raise PipelineError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    original = load_onnx(source)
    graph = make_graph(original, mode, high_precision, allow_fp32,
                       fp32=load_onnx(fp32_onnx) if fp32_onnx is not None and mode == "fast" else None)
    if graph.refused is not None:
        raise PipelineError(graph.refused)
    if verify:
        shape = onnx_input_shape(original, batch_size=8)
        random = random_batches(shape if isinstance(shape[0], tuple) else tuple(shape), n=4)
        inputs = Inputs(random, held_out(images, labels, data, None, graph_chw(original)))
        runners = {"export": OnnxRunner(original), **graph_runners({mode: graph}),
                   **({"fp32": OnnxRunner(fp32_onnx)} if fp32_onnx is not None else {}),
                   **({"pytorch": reference[0]} if reference is not None and inputs.labelled else {})}
        tallies = inputs.measure(runners)
        if mode == "exact":
            check_exact(graph, tallies, atol)
        else:
            _verify_fast_file(graph, tallies, inputs, fp32_onnx, reference)
        if inputs.labelled:
            graph.accuracy = score(tallies["real"], mode)
        for c in graph.checks:
            require(c)
    write_graph(graph, target)
    return graph


def _verify_fast_file(graph: Graph, tallies: dict, inputs: Inputs, fp32_onnx: Optional[Path],
                      reference: Optional[tuple]) -> None:
    """check_fast with what a file-level run has: a PyTorch reference (checked to agree with the source graph),
    else the source graph's own accuracy; an FP32 ONNX for the error ratio."""
    ref, first = None, []
    if inputs.labelled:
        real = tallies["real"]
        if reference is not None:
            name = reference[1]
            first.append(per_output(real, "pytorch", "export",
                                    lambda s: agreement(s, None, None, real=True, engine=None, source=name)))
            ref = (score(real, "pytorch"), name)
        else:
            ref = (score(real, "export"), "the input graph (= PyTorch INT8 up to rounding)")
    check_fast(graph, tallies, inputs, ref)
    if ref is not None and fp32_onnx is None:
        # no FP32 ONNX: the fast graph keeps the source's biases and differs from it by placement alone
        real = tallies["real"]
        graph.checks.append(compare.accuracy_at_least(
            "fast_placement_accuracy", score(real, graph.mode), real.samples, ref[0],
            contract.FAST_ACCURACY_DROP[graph.high_precision], ref[1], fix=USE_EXACT,
            agreement=real.pair(graph.mode, "export")[0].agreement))
    graph.checks = first + graph.checks
    if ref is None and fp32_onnx is None:
        graph.checks.append(Check("fast_error_ratio", None, "not measured", True,
                                  detail="no labelled images and no FP32 ONNX: only the lint ran"))


def write_fp16(fp32_onnx: Path, target: Path, images: Optional[list] = None, labels: Optional[torch.Tensor] = None,
               fp32_accuracy: Optional[float] = None, reference_name: str = "the FP32 ONNX",
               data: Optional[Iterable] = None, device: str = "cpu") -> list[Check]:
    """FP16 ONNX (float32 I/O) for strongly typed TensorRT; with labelled images (or `data`, (inputs, labels)
    pairs), its top-1 held to FP32's within FP16_ACCURACY_TOLERANCE (`fp32_accuracy` when the caller measured it
    already, else the FP32 ONNX's), evaluated on `device` (a GPU: by PyTorch, runtime/torch_graph.py). Written
    only when the check passes."""
    from .graph.fp16 import refuse_quantized, to_fp16

    source = load_onnx(fp32_onnx)
    refuse_quantized(source, fp32_onnx)
    fp16 = to_fp16(source)
    checks = []
    real = held_out(images, labels, data, None, graph_chw(source))
    if real is not None and real.labelled:
        device = resolve_device(device)
        runners = {"fp16": graph_runner(fp16, device),
                   **({"fp32": graph_runner(source, device)} if fp32_accuracy is None else {})}
        tally = run_together(runners, real, [], desc="FP16 ONNX")
        fp32_accuracy = score(tally, "fp32") if fp32_accuracy is None else fp32_accuracy
        checks.append(compare.accuracy_matches(
            "fp16_accuracy", score(tally, "fp16"), tally.samples, fp32_accuracy,
            reference_name, contract.FP16_ACCURACY_TOLERANCE,
            fix="keep sensitive layers in FP32 (e.g. ModelOpt AutoCast) before building the FP16 engine"))
    for c in checks:
        require(c)
    save_onnx(fp16, target)
    return checks
