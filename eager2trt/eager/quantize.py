"""Eager-mode static quantization in the project's TensorRT scheme: qconfig, calibrate, convert."""

import copy
from typing import Iterable, Optional, Sequence

import torch
from torch.ao import quantization as tq

from ..errors import PipelineError, require_choice
from .calibration import (AUTO_METHODS, DEFAULT_PERCENTILE, RangeObserver, check_percentile,
                          choose_calibration, convert_copy)
from . import distributed
from .engines import DEFAULT_ENGINE, candidate_engines, computes_conv_transpose, notice
from .layers import CONV_TRANSPOSE, find_islands, has_conv_transpose, wrap_islands
from .quiet import quantized_api
from ..runtime.inputs import as_args, head, peek

ACTIVATION_DTYPES = {"quint8": torch.quint8, "qint8": torch.qint8}
# minmax and histogram are torch.ao's own observers; the outlier-robust ranges are eager/calibration.py's.
OBSERVERS = {"minmax": tq.MinMaxObserver, "histogram": tq.HistogramObserver,
             "percentile": RangeObserver.with_args(method="percentile"),
             "entropy": RangeObserver.with_args(method="entropy"), "mse": RangeObserver.with_args(method="mse")}
# auto: one RangeObserver pass, every candidate method converted and scored on held-out training images
CALIBRATIONS = (*OBSERVERS, "auto")
# The reference clamps weights to [-127, 127] so int8 weights are symmetric, as TensorRT requires.
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
EPS = 2.0 ** -12


def qconfig(activation_dtype: str = "quint8", calibration: str = "histogram", percentile: float = DEFAULT_PERCENTILE,
            auto_methods: Sequence[str] = AUTO_METHODS) -> tq.QConfig:
    """Per-channel symmetric int8 weights in [-127, 127]; per-tensor symmetric activations.

    quint8 symmetric activations have zero point 128 and the same scale as qint8 symmetric ones,
    so the ONNX stage maps them exactly to int8 zero point 0 (q_s8 = q_u8 - 128). Every calibration method
    shares that scale formula (torch.ao's `_calculate_qparams`); only the range it is given differs.
    """
    require_choice("activation_dtype", activation_dtype, ACTIVATION_DTYPES)
    require_choice("calibration", calibration, CALIBRATIONS)
    observer = OBSERVERS.get(calibration)
    if observer is None:  # auto: statistics for every candidate method in one observer
        observer = RangeObserver.with_args(torch_histogram="histogram" in auto_methods)
    if calibration in ("percentile", "auto"):
        observer = observer.with_args(percentile=check_percentile(percentile))
    act = observer.with_args(dtype=ACTIVATION_DTYPES[activation_dtype], qscheme=torch.per_tensor_symmetric,
                             reduce_range=False, eps=EPS)
    weight = tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                   quant_min=WEIGHT_QMIN, quant_max=WEIGHT_QMAX, eps=EPS)
    return tq.QConfig(activation=act, weight=weight)


def per_tensor_weights(config: tq.QConfig) -> tq.QConfig:
    """`config` with per-tensor symmetric int8 weights in [-127, 127]: for ConvTranspose, whose per-channel weight
    observers eager-mode prepare refuses (torch.ao asserts "not supported yet for ConvTranspose")."""
    weight = tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric,
                                         quant_min=WEIGHT_QMIN, quant_max=WEIGHT_QMAX, eps=EPS)
    return tq.QConfig(activation=config.activation, weight=weight)


def prepare_for(fused: torch.nn.Module, activation_dtype: str = "quint8", calibration: str = "histogram",
                percentile: float = DEFAULT_PERCENTILE, auto_methods: Sequence[str] = AUTO_METHODS,
                islands: Sequence[str] = ()) -> torch.nn.Module:
    """A copy of a fused FP32 model with observers inserted, ready for `calibration.calibrate`; the leaf modules
    at `islands` (layers.find_islands) are wrapped to run in float (layers.wrap_islands)."""
    model = wrap_islands(copy.deepcopy(fused).eval().cpu(), list(islands))
    model.qconfig = qconfig(activation_dtype, calibration, percentile, auto_methods)
    for m in model.modules():
        if isinstance(m, CONV_TRANSPOSE) and not hasattr(m, "qconfig"):  # an island's own is None: left as is
            m.qconfig = per_tensor_weights(model.qconfig)
    try:
        return tq.prepare(model, inplace=True)
    except Exception as exc:  # torch.ao raises AssertionError, RuntimeError... for a layer it cannot observe
        raise PipelineError(_prepare_failure(model, exc)) from None


def _prepare_failure(model: torch.nn.Module, exc: Exception) -> str:
    """The sentence for a failed prepare of `model` (as prepare left it), naming the first leaf module that fails
    alone with its own qconfig (the root's where prepare had not propagated it yet)."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    for name, m in model.named_modules():
        config = getattr(m, "qconfig", model.qconfig)
        if name and config is not None and not list(m.children()):
            alone = copy.deepcopy(m)
            alone.qconfig = config
            try:
                tq.prepare(alone, inplace=True)
            except Exception:
                return (f"torch.ao cannot prepare {name} ({type(m).__name__}) for quantization ({reason}); replace "
                        f"it with a layer of the table in docs/bring_your_own_model.md, or set {name}.qconfig = None "
                        f"and put a DeQuantStub before it and a QuantStub after it to keep it in float")
    return (f"torch.ao cannot prepare the model for quantization ({reason}); check it against the layer table in "
            f"docs/bring_your_own_model.md")


def conv_transpose_engines(fused: torch.nn.Module, candidates: list[str]) -> tuple[list[str], tuple]:
    """The candidate engines that compute ConvTranspose as the Q/DQ graph does (all of them when the model has
    none), and the layer types to keep in float instead when none of them does."""
    if not has_conv_transpose(fused):
        return candidates, ()
    faithful = [e for e in candidates if computes_conv_transpose(e)]
    if faithful:
        return faithful, ()
    notice(f"note: no quantized engine of this machine among {', '.join(candidates)} computes ConvTranspose as the "
           f"Q/DQ graph does (engines.conv_transpose_error); every ConvTranspose is kept in float")
    return candidates, CONV_TRANSPOSE


def quantize(fused: torch.nn.Module, calib_batches: Iterable[torch.Tensor], activation_dtype: str = "quint8",
             calibration: str = "histogram", engine: str = DEFAULT_ENGINE, percentile: float = DEFAULT_PERCENTILE,
             holdout: Optional[tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]] = None,
             auto_methods: Sequence[str] = AUTO_METHODS) -> torch.nn.Module:
    """Prepare, calibrate on `calib_batches` (float NCHW) and convert a fused FP32 model to INT8.

    Calibration runs once. Conversion packs weights for one engine, so it is repeated per candidate engine
    (engines.candidate_engines: the faithful ones on this machine, in order) until one runs the model.
    `calibration` "auto" also needs `holdout` = (batches, labels) of training images not used for calibration:
    each of `auto_methods` is converted from the one calibration pass and the most accurate there is kept
    (its choice and scores are on the returned model as `calibration_choice`).
    """
    if calibration == "auto" and holdout is None:
        raise PipelineError("calibration 'auto' chooses by accuracy on held-out labelled training images; pass "
                            "holdout=(batches, labels) disjoint from the calibration images, never the test set")
    candidates, float_types = conv_transpose_engines(fused, candidate_engines(engine))
    islands = find_islands(fused, float_types)
    with quantized_api():
        prepared = prepare_for(fused, activation_dtype, calibration, percentile, auto_methods, islands)
        example, calib_batches = peek(calib_batches, "calib_batches")
        # one process: calibration.calibrate; under torchrun each rank's share, observers merged across ranks
        distributed.calibrate(prepared, calib_batches, desc=f"calibrating ({calibration})")
        int8 = _convert_on_a_faithful_engine(prepared, head(example, 1), candidates, activation_dtype, calibration,
                                             percentile, holdout, auto_methods)
    int8.float_islands = islands  # module paths in the float model, reported by the pipeline
    return int8


def _convert_on_a_faithful_engine(prepared, example, candidates, activation_dtype, calibration, percentile, holdout,
                                  auto_methods) -> torch.nn.Module:
    failures, method = [], None
    for name in candidates:
        torch.backends.quantized.engine = name
        try:
            if calibration == "auto" and method is None:
                method, table, int8 = choose_calibration(prepared, *holdout, methods=auto_methods,
                                                         percentile=percentile)
                int8.calibration_choice = {"method": method, "holdout_accuracy": table}
            else:
                int8 = convert_copy(prepared, method, percentile)
        except (ValueError, RuntimeError, AssertionError, NotImplementedError) as exc:  # torch.ao's from_float
            raise PipelineError(_convert_failure(prepared, exc)) from None
        failure = _run_failure(int8, example)
        if failure is None:
            if failures:
                notice(f"note: {'; '.join(failures)}; using the {name} engine")
            return int8
        failures.append(f"the {name} engine cannot run this model ({failure})")
    raise PipelineError(_cannot_run(failures, activation_dtype))


def _convert_failure(prepared: torch.nn.Module, exc: Exception) -> str:
    """The sentence for a failed convert, naming the first observed module that fails to convert alone (e.g. a Conv2d
    with padding_mode 'circular', which quantized convolution refuses)."""
    from torch.ao.quantization.quantization_mappings import get_default_static_quant_module_mappings

    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    swapped = get_default_static_quant_module_mappings()
    for name, m in prepared.named_modules():
        if name and type(m) in swapped and getattr(m, "qconfig", None) is not None:
            try:
                tq.convert(torch.nn.Sequential(copy.deepcopy(m)), inplace=True)
            except Exception:
                return (f"torch.ao cannot convert {name} ({type(m).__name__}) to INT8 ({reason}); change it to a "
                        f"layer of the table in docs/bring_your_own_model.md, or set {name}.qconfig = None and put a "
                        f"DeQuantStub before it and a QuantStub after it to keep it in float")
    return f"torch.ao cannot convert the model to INT8 ({reason}); check it against the layer table in " \
           f"docs/bring_your_own_model.md"


def _run_failure(int8: torch.nn.Module, example: torch.Tensor) -> Optional[str]:
    """None when the INT8 model runs on `example` (one image of the calibration data), else where it failed (the
    innermost module entered and not left: a functional call fails in the forward() that makes it) and why."""
    open_modules = []

    def leave(module, inputs, out) -> None:  # a forward hook that returned a value would replace the output
        open_modules.pop()

    hooks = [h for name, m in int8.named_modules() if name
             for h in (m.register_forward_pre_hook(lambda mod, inputs, name=name: open_modules.append(name)),
                       m.register_forward_hook(leave))]
    try:
        with torch.no_grad():
            int8(*as_args(example))
        return None
    except (RuntimeError, NotImplementedError) as exc:
        where = f"in {open_modules[-1]}" if open_modules else "in the model's own forward()"
        return f"{where}: {str(exc).strip().splitlines()[0][:160]}"
    finally:
        for h in hooks:
            h.remove()


def _cannot_run(failures: list[str], activation_dtype: str) -> str:
    """The sentence when no engine runs the model: the detected cause, not a guess."""
    text = "; ".join(failures)
    if activation_dtype == "qint8":
        return (f"torch {torch.__version__} cannot run qint8 activations ({text}); use activation dtype quint8, "
                f"which maps exactly to TensorRT's int8 in the ONNX stage")
    return (f"the INT8 model does not run: {text}; a quantized tensor reached an operation without a quantized "
            f"kernel: use the module form of that layer (e.g. nn.SiLU for F.silu), which the pipeline keeps in float "
            f"(docs/bring_your_own_model.md, layer table)")
