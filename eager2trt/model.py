"""One model definition (torchvision's quantizable ResNet/MobileNetV2) with fusion and eager-mode quantization."""

import copy
import functools
import sys
import warnings
from typing import Iterable

import torch
from torch.ao import quantization as tq
from torchvision.models import quantization as qmodels

from .contract import FUSE_ATOL, FUSE_RTOL, IMAGE_SHAPE  # the reference's fused-vs-unfused check
from .errors import PipelineError, require_choice

ARCHS = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v2_cifar")
# The CIFAR-sized MobileNetV2 stem (as in the common CIFAR ports): the first conv and the first
# down-sampling block at stride 1, so 32x32 inputs end in 4x4 maps instead of ImageNet's 1x1. Only the
# strides of torchvision's own modules change (3x3 kernels, padding 1), so quantization and fusion are
# torchvision's; these two blocks have no residual add, so no skip connection depends on the stride.
CIFAR_STEM_STRIDE1 = {"mobilenet_v2_cifar": ("features.0.0", "features.2.conv.1.0")}
ACTIVATION_DTYPES = {"quint8": torch.quint8, "qint8": torch.qint8}
OBSERVERS = {"minmax": tq.MinMaxObserver, "histogram": tq.HistogramObserver}
# The reference clamps weights to [-127, 127] so int8 weights are symmetric, as TensorRT requires.
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
EPS = 2.0 ** -12
# Quantized CPU engines whose INT8 arithmetic matches the exported Q/DQ graph (int32 accumulation, like
# TensorRT), in order of preference. x86 and fbgemm accumulate u8*s8 products pairwise in 16 bits
# (vpmaddubsw), which saturates at full-range activations; PyTorch's own x86 qconfig uses reduce_range=True
# for this reason, which a TensorRT-exact scheme cannot. Measured: bench/engines.py, README "Engine".
FAITHFUL_ENGINES = ("onednn", "qnnpack")
DRIFTING_ENGINES = ("x86", "fbgemm")
DEFAULT_ENGINE = FAITHFUL_ENGINES[0]


def build_model(arch: str = "resnet18", num_classes: int = 10) -> torch.nn.Module:
    """torchvision's quantizable model in float mode, randomly initialised; `_cifar` archs get stride-1 stems."""
    require_choice("--arch", arch, ARCHS)
    model = getattr(qmodels, arch.removesuffix("_cifar"))(weights=None, quantize=False, num_classes=num_classes)
    modules = dict(model.named_modules())
    for name in CIFAR_STEM_STRIDE1.get(arch, ()):
        modules[name].stride = (1, 1)
    return model


def num_classes(model: torch.nn.Module) -> int:
    """Output features of the model's last Linear layer (ResNet's fc, MobileNetV2's classifier)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features


def variance_preserving_init(model: torch.nn.Module) -> torch.nn.Module:
    """Kaiming-normal (fan_in) weights for every conv and linear layer, in place; for untrained fidelity checks.

    With eval-mode BatchNorm an identity, the init alone sets activation scales through the depth:
    torchvision's fan_out init (and its 0.01-std classifier) lets them shrink or grow layer by layer, so
    logits of an untrained model measure that drift rather than quantization. fan_in keeps them O(1).
    """
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    return model


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
        raise PipelineError(f"checkpoint {path} does not fit {arch} with {num_classes(model)} classes "
                            f"({detail[:160]}); pass --arch and a checkpoint that match") from None
    return model


def fuse(model: torch.nn.Module, num_checks: int = 4, seed: int = 0,
         input_shape: tuple = IMAGE_SHAPE) -> tuple[torch.nn.Module, float]:
    """Return a fused copy (conv+bn+relu, conv+bn, downsample) and its max abs deviation.

    Raises when fused and unfused outputs differ beyond the reference's rtol/atol on random inputs.
    """
    model = model.eval()
    fused = copy.deepcopy(model)
    fused.fuse_model()  # torchvision: fuses every block in place, numerics unchanged
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_checks, *input_shape, generator=gen)
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


def supported_engines() -> list[str]:
    """The quantized CPU engines this torch build has."""
    return [e for e in torch.backends.quantized.supported_engines if e != "none"]


def faithful_engine() -> str:
    """The first of FAITHFUL_ENGINES this build has, with a one-line notice when it is not onednn."""
    supported = supported_engines()
    for name in FAITHFUL_ENGINES:
        if name in supported:
            if name != DEFAULT_ENGINE:
                _notice(f"note: this torch build has no {DEFAULT_ENGINE} quantized engine; using {name}, "
                        f"which also matches the exported Q/DQ graph")
            return name
    _notice(f"note: this torch build has none of {', '.join(FAITHFUL_ENGINES)}; using {supported[0]}, whose "
            f"INT8 results may differ from the exported Q/DQ graph")
    return supported[0]


def select_engine(name: str = DEFAULT_ENGINE) -> str:
    """Set and return the quantized CPU engine; the default falls back to a faithful one this build has."""
    name = faithful_engine() if name == DEFAULT_ENGINE else require_choice("--engine", name, supported_engines())
    if name in DRIFTING_ENGINES:
        _notice(f"warning: the {name} engine drifts from the exported Q/DQ graph (and TensorRT) on depthwise "
                f"models at full-range 8-bit activations; use --engine {DEFAULT_ENGINE} for fidelity")
    torch.backends.quantized.engine = name
    return name


@functools.lru_cache(maxsize=None)
def _notice(message: str) -> None:
    """Print `message` to stderr once per process (select_engine runs at validation and at quantization)."""
    print(message, file=sys.stderr)


def quantize(fused: torch.nn.Module, calib_batches: Iterable[torch.Tensor], activation_dtype: str = "quint8",
             calibration: str = "histogram", engine: str = DEFAULT_ENGINE) -> torch.nn.Module:
    """Prepare, calibrate on `calib_batches` (float NCHW) and convert a fused FP32 model to INT8."""
    engine = select_engine(engine)
    model = copy.deepcopy(fused).eval().cpu()
    model.qconfig = qconfig(activation_dtype, calibration)
    tq.prepare(model, inplace=True)
    with torch.no_grad():
        for x in calib_batches:
            model(x)
    with warnings.catch_warnings():
        # MobileNetV2's blocks without a residual never call their FloatFunctional; its unused observer's
        # "must run observer before calling calculate_qparams" is expected there.
        warnings.filterwarnings("ignore", message="must run observer before calling calculate_qparams")
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
