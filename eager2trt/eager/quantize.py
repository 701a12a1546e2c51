"""Eager-mode static quantization in the project's TensorRT scheme: qconfig, calibrate, convert."""

import copy
from typing import Iterable, Optional, Sequence

import torch
from torch.ao import quantization as tq

from ..errors import PipelineError, require_choice
from .calibration import (AUTO_METHODS, DEFAULT_PERCENTILE, RangeObserver, check_percentile,
                          choose_calibration, convert_copy)
from . import distributed
from .engines import DEFAULT_ENGINE, candidate_engines, notice
from .quiet import quantized_api
from ..runtime.inputs import peek

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


def prepare_for(fused: torch.nn.Module, activation_dtype: str = "quint8", calibration: str = "histogram",
                percentile: float = DEFAULT_PERCENTILE, auto_methods: Sequence[str] = AUTO_METHODS) -> torch.nn.Module:
    """A copy of a fused FP32 model with observers inserted, ready for `calibration.calibrate`."""
    model = copy.deepcopy(fused).eval().cpu()
    model.qconfig = qconfig(activation_dtype, calibration, percentile, auto_methods)
    return tq.prepare(model, inplace=True)


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
    candidates = candidate_engines(engine)
    with quantized_api():
        prepared = prepare_for(fused, activation_dtype, calibration, percentile, auto_methods)
        example, calib_batches = peek(calib_batches, "calib_batches")
        # one process: calibration.calibrate; under torchrun each rank's share, observers merged across ranks
        distributed.calibrate(prepared, calib_batches, desc=f"calibrating ({calibration})")
        return _convert_on_a_faithful_engine(prepared, example[:1], candidates, activation_dtype, calibration,
                                             percentile, holdout, auto_methods)


def _convert_on_a_faithful_engine(prepared, example, candidates, activation_dtype, calibration, percentile, holdout,
                                  auto_methods) -> torch.nn.Module:
    failures, method = [], None
    for name in candidates:
        torch.backends.quantized.engine = name
        if calibration == "auto" and method is None:
            method, table, int8 = choose_calibration(prepared, *holdout, methods=auto_methods, percentile=percentile)
            int8.calibration_choice = {"method": method, "holdout_accuracy": table}
        else:
            int8 = convert_copy(prepared, method, percentile)
        failure = _run_failure(int8, example)
        if failure is None:
            if failures:
                notice(f"note: {'; '.join(failures)}; using the {name} engine")
            return int8
        failures.append(f"the {name} engine cannot run this model ({failure})")
    raise PipelineError(_cannot_run(failures, activation_dtype))


def _run_failure(int8: torch.nn.Module, example: torch.Tensor) -> Optional[str]:
    """None when the INT8 model runs on `example` (one image of the calibration data), else the first line of why."""
    try:
        with torch.no_grad():
            int8(example)
        return None
    except (RuntimeError, NotImplementedError) as exc:
        return str(exc).strip().splitlines()[0][:160]


def _cannot_run(failures: list[str], activation_dtype: str) -> str:
    """The sentence when no engine runs the model: the detected cause, not a guess."""
    text = "; ".join(failures)
    if activation_dtype == "qint8":
        return (f"torch {torch.__version__} cannot run qint8 activations ({text}); use activation dtype quint8, "
                f"which maps exactly to TensorRT's int8 in the ONNX stage")
    return f"the INT8 model does not run: {text}"
