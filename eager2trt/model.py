"""One model definition (torchvision's quantizable ResNet) with fusion and eager-mode quantization."""

import copy
from typing import Iterable

import torch
from torch.ao import quantization as tq
from torchvision.models import quantization as qmodels

from .errors import PipelineError, require_choice

ARCHS = ("resnet18", "resnet50")
ACTIVATION_DTYPES = {"quint8": torch.quint8, "qint8": torch.qint8}
OBSERVERS = {"minmax": tq.MinMaxObserver, "histogram": tq.HistogramObserver}
# The reference clamps weights to [-127, 127] so int8 weights are symmetric, as TensorRT requires.
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
EPS = 2.0 ** -12
# Fused vs unfused tolerance from the reference.
FUSE_RTOL, FUSE_ATOL = 1e-3, 1e-6


def build_model(arch: str = "resnet18", num_classes: int = 10) -> torch.nn.Module:
    """torchvision's quantizable ResNet (ImageNet stem) in float mode, randomly initialised."""
    return getattr(qmodels, require_choice("--arch", arch, ARCHS))(weights=None, quantize=False, num_classes=num_classes)


def load_state_dict(model: torch.nn.Module, path, arch: str) -> torch.nn.Module:
    """Load an FP32 state_dict (or a training checkpoint holding one) into `model`, in place."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"checkpoint {path} does not exist; pass the path of a saved FP32 state_dict") from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise PipelineError(f"checkpoint {path} is not a readable PyTorch state_dict ({type(exc).__name__}); "
                            f"re-save it with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise PipelineError(f"checkpoint {path} does not fit {arch} with {model.fc.out_features} classes "
                            f"({detail[:160]}); pass --arch and a checkpoint that match") from None
    return model


def fuse(model: torch.nn.Module, num_checks: int = 4, seed: int = 0) -> tuple[torch.nn.Module, float]:
    """Return a fused copy (conv+bn+relu, conv+bn, downsample) and its max abs deviation.

    Raises when fused and unfused outputs differ beyond the reference's rtol/atol on random inputs.
    """
    model = model.eval()
    fused = copy.deepcopy(model)
    fused.fuse_model()  # torchvision: fuses every block in place, numerics unchanged
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_checks, 3, 32, 32, generator=gen)
    with torch.no_grad():
        ref, out = model(x), fused(x)
    max_abs = (ref - out).abs().max().item()
    if not torch.allclose(out, ref, rtol=FUSE_RTOL, atol=FUSE_ATOL):
        raise PipelineError(f"fused model deviates from the unfused one by up to {max_abs:.3g} "
                            f"(rtol {FUSE_RTOL}, atol {FUSE_ATOL}); the model is not fusable as-is")
    return fused, max_abs


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


def select_engine(name: str = "x86") -> str:
    """Set and return the quantized CPU engine, which this build must support."""
    supported = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    torch.backends.quantized.engine = require_choice("--engine", name, supported)
    return name


def quantize(fused: torch.nn.Module, calib_batches: Iterable[torch.Tensor], activation_dtype: str = "quint8",
             calibration: str = "histogram", engine: str = "x86") -> torch.nn.Module:
    """Prepare, calibrate on `calib_batches` (float NCHW) and convert a fused FP32 model to INT8."""
    engine = select_engine(engine)
    model = copy.deepcopy(fused).eval().cpu()
    model.qconfig = qconfig(activation_dtype, calibration)
    tq.prepare(model, inplace=True)
    with torch.no_grad():
        for x in calib_batches:
            model(x)
    tq.convert(model, inplace=True)
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
