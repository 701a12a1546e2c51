"""Eager-mode static quantization in the project's TensorRT scheme: qconfig, calibrate, convert."""

import copy
import warnings
from typing import Iterable, Optional

import torch
from torch.ao import quantization as tq
from tqdm import tqdm

from ..errors import PipelineError, require_choice
from .engines import DEFAULT_ENGINE, candidate_engines, notice
from .quiet import quantized_api

ACTIVATION_DTYPES = {"quint8": torch.quint8, "qint8": torch.qint8}
OBSERVERS = {"minmax": tq.MinMaxObserver, "histogram": tq.HistogramObserver}
# The reference clamps weights to [-127, 127] so int8 weights are symmetric, as TensorRT requires.
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
EPS = 2.0 ** -12


def qconfig(activation_dtype: str = "quint8", calibration: str = "histogram") -> tq.QConfig:
    """Per-channel symmetric int8 weights in [-127, 127]; per-tensor symmetric activations.

    quint8 symmetric activations have zero point 128 and the same scale as qint8 symmetric ones,
    so the ONNX stage maps them exactly to int8 zero point 0 (q_s8 = q_u8 - 128).
    """
    require_choice("activation_dtype", activation_dtype, ACTIVATION_DTYPES)
    require_choice("calibration", calibration, OBSERVERS)
    act = OBSERVERS[calibration].with_args(dtype=ACTIVATION_DTYPES[activation_dtype],
                                           qscheme=torch.per_tensor_symmetric, reduce_range=False, eps=EPS)
    weight = tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                   quant_min=WEIGHT_QMIN, quant_max=WEIGHT_QMAX, eps=EPS)
    return tq.QConfig(activation=act, weight=weight)


def quantize(fused: torch.nn.Module, calib_batches: Iterable[torch.Tensor], activation_dtype: str = "quint8",
             calibration: str = "histogram", engine: str = DEFAULT_ENGINE) -> torch.nn.Module:
    """Prepare, calibrate on `calib_batches` (float NCHW) and convert a fused FP32 model to INT8.

    Calibration runs once; conversion packs weights for one engine, so it is repeated per candidate engine
    (engines.candidate_engines: the faithful ones on this machine, in order) until one runs the model.
    """
    with quantized_api():
        return _quantize(fused, calib_batches, activation_dtype, calibration, candidate_engines(engine))


def _quantize(fused: torch.nn.Module, calib_batches: Iterable[torch.Tensor], activation_dtype: str,
              calibration: str, candidates: list) -> torch.nn.Module:
    model = copy.deepcopy(fused).eval().cpu()
    model.qconfig = qconfig(activation_dtype, calibration)
    tq.prepare(model, inplace=True)
    example = None
    with torch.no_grad():
        for x in tqdm(calib_batches, desc="calibrating", unit="batch", leave=False, mininterval=2.0, delay=2.0):
            example = x[:1] if example is None else example
            model(x)
    if example is None:
        raise PipelineError("calib_batches yielded no batch; pass at least one batch of real inputs")
    failures = []
    for name in candidates:
        torch.backends.quantized.engine = name
        int8 = _convert(model)
        failure = _run_failure(int8, example)
        if failure is None:
            if failures:
                notice(f"note: {'; '.join(failures)}; using the {name} engine")
            return int8
        failures.append(f"the {name} engine cannot run this model ({failure})")
    raise PipelineError(_cannot_run(failures, activation_dtype))


def _convert(prepared: torch.nn.Module) -> torch.nn.Module:
    """Convert a copy of a calibrated model for the current engine."""
    model = copy.deepcopy(prepared)
    with warnings.catch_warnings():
        # blocks whose FloatFunctional is never called (MobileNetV2 without a residual) leave an observer that
        # never saw data; its "must run observer before calling calculate_qparams" is expected there.
        warnings.filterwarnings("ignore", message="must run observer before calling calculate_qparams")
        tq.convert(model, inplace=True)
    return model


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
