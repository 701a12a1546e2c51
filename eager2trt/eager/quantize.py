"""Eager-mode static quantization in the project's TensorRT scheme: qconfig, calibrate, convert."""

import copy
from typing import Iterable, Optional, Sequence

import torch
from torch.ao import quantization as tq

from ..errors import PipelineError, require_choice
from .calibration import (AUTO_METHODS, DEFAULT_PERCENTILE, RangeObserver, calibrate, check_percentile,
                          choose_calibration, convert_copy)
from .engines import DEFAULT_ENGINE, select_engine

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
    require_choice("--activation-dtype", activation_dtype, ACTIVATION_DTYPES)
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

    `calibration` "auto" also needs `holdout` = (batches, labels) of training images not used for calibration:
    each of `auto_methods` is converted from the one calibration pass and the most accurate there is kept
    (its choice and scores are on the returned model as `calibration_choice`).
    """
    engine = select_engine(engine)
    if calibration == "auto" and holdout is None:
        raise PipelineError("calibration 'auto' chooses by accuracy on held-out labelled training images; pass "
                            "holdout=(batches, labels) disjoint from the calibration images, never the test set")
    prepared = prepare_for(fused, activation_dtype, calibration, percentile, auto_methods)
    calibrate(prepared, calib_batches, desc=f"calibrating ({calibration})")
    if calibration == "auto":
        method, table, model = choose_calibration(prepared, *holdout, methods=auto_methods, percentile=percentile)
        model.calibration_choice = {"method": method, "holdout_accuracy": table}
    else:
        model = convert_copy(prepared)
    _check_runs(model, activation_dtype, engine)
    return model


def _check_runs(qmodel: torch.nn.Module, activation_dtype: str, engine: str) -> None:
    """Run one input so an unsupported dtype/engine pair fails here with a sentence, not later."""
    try:
        with torch.no_grad():
            qmodel(torch.zeros(1, 3, 32, 32))
    except (RuntimeError, NotImplementedError) as exc:
        raise PipelineError(
            f"torch {torch.__version__} cannot run {activation_dtype} activations on the {engine} engine "
            f"({str(exc).splitlines()[0][:120]}); use --activation-dtype quint8, which maps exactly to "
            f"TensorRT's int8 in the ONNX stage") from None
