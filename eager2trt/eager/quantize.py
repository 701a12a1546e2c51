"""Eager-mode static quantization in the project's TensorRT scheme: qconfig, calibrate, convert."""

import copy
import warnings
from typing import Iterable

import torch
from torch.ao import quantization as tq

from ..errors import PipelineError, require_choice
from .engines import DEFAULT_ENGINE, select_engine

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
    require_choice("--activation-dtype", activation_dtype, ACTIVATION_DTYPES)
    require_choice("--calibration", calibration, OBSERVERS)
    act = OBSERVERS[calibration].with_args(dtype=ACTIVATION_DTYPES[activation_dtype],
                                           qscheme=torch.per_tensor_symmetric, reduce_range=False, eps=EPS)
    weight = tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                   quant_min=WEIGHT_QMIN, quant_max=WEIGHT_QMAX, eps=EPS)
    return tq.QConfig(activation=act, weight=weight)


def quantize(fused: torch.nn.Module, calib_batches: Iterable[torch.Tensor], activation_dtype: str = "quint8",
             calibration: str = "histogram", engine: str = DEFAULT_ENGINE) -> torch.nn.Module:
    """Prepare, calibrate on `calib_batches` (float NCHW) and convert a fused FP32 model to INT8."""
    engine = select_engine(engine)
    model = copy.deepcopy(fused).eval().cpu()
    model.qconfig = qconfig(activation_dtype, calibration)
    tq.prepare(model, inplace=True)
    example = None
    with torch.no_grad():
        for x in calib_batches:
            model(x)
            example = x[:1] if example is None else example
    if example is None:
        raise PipelineError("no calibration batches were given; pass at least one float NCHW batch of inputs")
    with warnings.catch_warnings():
        # MobileNetV2's blocks without a residual never call their FloatFunctional; its unused observer's
        # "must run observer before calling calculate_qparams" is expected there.
        warnings.filterwarnings("ignore", message="must run observer before calling calculate_qparams")
        tq.convert(model, inplace=True)
    _check_runs(model, example, activation_dtype, engine)
    return model


def _check_runs(qmodel: torch.nn.Module, example: torch.Tensor, activation_dtype: str, engine: str) -> None:
    """Run one calibration-shaped input so an engine that cannot run the model fails here with its cause."""
    try:
        with torch.no_grad():
            qmodel(torch.zeros_like(example))
    except (RuntimeError, NotImplementedError) as exc:
        raise PipelineError(_cannot_run(str(exc).strip().splitlines()[0][:120], activation_dtype, engine)) from None


def _cannot_run(first_line: str, activation_dtype: str, engine: str) -> str:
    """The sentence for a converted model that does not run: the dtype advice only where the dtype is the cause."""
    head = f"torch {torch.__version__}'s {engine} engine cannot run this INT8 model ({first_line})"
    if activation_dtype != "quint8":
        return f"{head}; use activation_dtype='quint8', which maps exactly to TensorRT's int8 in the ONNX stage"
    # quint8 is what every CPU engine runs, so the failure is the engine's kernel for one of the model's layers
    return f"{head}; quantize with another engine (engine='qnnpack' or 'onednn')"
