"""A converted INT8 model quantized with someone else's qconfig, brought into the project's TensorRT scheme.

TensorRT's explicit quantization reads symmetric int8 only: zero point 0 for activations and weights (TensorRT 11's
ONNX parser rejects any other). PyTorch's default qconfigs (`get_default_qconfig("x86" | "fbgemm" | "qnnpack")`)
quantize activations affinely (quint8 with a data-dependent zero point), which no exact rewrite maps to zero point
0. So such a model is re-derived: its float twin is prepared in the project's scheme (eager/quantize.py: per-tensor
symmetric quint8 activations, zero point 128; per-channel symmetric int8 weights in [-127, 127], re-quantized from
the float weights), each activation observer is given the range the user's INT8 model itself produces on the
calibration batches (never beyond the user's scale and zero point), and torch.ao's own scale formula turns that
into the symmetric scale. The error this adds is measured (the `requantization` check). A model already in a
symmetric scheme (quint8 zero point 128, zero-point-0 weights) is used as is.
"""

import copy
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch
from torch.ao import quantization as tq
from torch.ao.nn.intrinsic import _FusedModule

from ..checks.compare import argmax_agreement, relative_distance
from ..checks.result import Check
from ..contract import REQUANTIZATION_RATIO_MAX
from ..errors import PipelineError
from .calibration import convert_copy
from .engines import AUTO, candidate_engines
from .model import fuse
from .quantize import prepare_for
from .quiet import quantized_api
from ..runtime.inputs import as_args, as_outputs, head

# quint8 zero point 128 maps exactly to int8 zero point 0 (graph/surgery.py int8_zero_points); qint8 0 is int8 0
SYMMETRIC_ZERO_POINTS = {torch.quint8: 128, torch.qint8: 0}
MEASURE_IMAGES = 512  # calibration images the added error is measured on when no held-out images are given
OBSERVER = "activation_post_process"
FIX = ("convert it with eager2trt.eager.quantize.qconfig() (the TensorRT scheme), or pass the FP32 model without "
       "int8= so the tool calibrates it")


@dataclass
class Activation:
    """One activation quantization of the user's model: the observer it seeds and the module whose output it is."""

    observer: str  # path of the project-scheme observer in the prepared float twin
    module: str  # path of the user's module producing the quantized output
    scale: float
    zero_point: int
    dtype: torch.dtype


def _qparams(module: torch.nn.Module) -> Optional[tuple[float, int, torch.dtype]]:
    """(scale, zero point, dtype) of a quantized module's output, None for a float module."""
    if not hasattr(module, "scale") or not hasattr(module, "zero_point"):
        return None
    dtype = getattr(module, "dtype", torch.quint8)  # quantized kernels other than Quantize write quint8
    return float(torch.as_tensor(module.scale).reshape(-1)[0]), int(torch.as_tensor(module.zero_point).reshape(-1)[0]), dtype


def _quantized_weight(module: torch.nn.Module) -> Optional[torch.Tensor]:
    weight = getattr(module, "weight", None)
    return weight() if callable(weight) and not isinstance(weight, torch.nn.Parameter) else None


def asymmetric_layers(int8: torch.nn.Module) -> list[str]:
    """Module paths of `int8` whose activation or weight zero point has no exact int8 zero-point-0 form."""
    bad = []
    for name, m in int8.named_modules():
        q = _qparams(m)
        if q is not None and SYMMETRIC_ZERO_POINTS.get(q[2]) != q[1]:
            bad.append(name)
            continue
        w = _quantized_weight(m)
        if w is not None and _weight_zero_points(w).any():
            bad.append(name)
    return bad


def _weight_zero_points(w: torch.Tensor) -> torch.Tensor:
    if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        return w.q_per_channel_zero_points()
    return torch.tensor([w.q_zero_point()])


def refuse_if_not_running(int8: torch.nn.Module, example: torch.Tensor) -> None:
    """Raise one sentence unless `int8` runs one image on the current quantized engine."""
    try:
        with torch.no_grad(), quantized_api():
            int8(*as_args(head(example, 1)))
    except (RuntimeError, NotImplementedError) as exc:
        first = str(exc).strip().splitlines()[0][:160]
        engine = torch.backends.quantized.engine
        if "QInt8" in first:  # torch 2.14.1: no engine takes qint8 activations into conv (docs/quantization.md)
            raise PipelineError(f"int8 does not run on the {engine} engine ({first}): torch {torch.__version__} "
                                f"cannot run qint8 activations; {FIX}") from None
        raise PipelineError(f"int8 does not run on the {engine} engine ({first}); convert it for the engine set in "
                            f"torch.backends.quantized.engine, or {FIX}") from None


def activations(int8: torch.nn.Module, prepared: torch.nn.Module) -> list[Activation]:
    """Each range observer of the prepared float twin, paired with the user's module that quantizes the same tensor;
    one sentence naming the path where the user's model has no quantized counterpart."""
    user = dict(int8.named_modules())
    found = []
    for path, obs in prepared.named_modules():
        if not path.endswith(OBSERVER) or type(obs) is not tq.MinMaxObserver:
            continue  # fixed-qparams observers (Hardsigmoid, Sigmoid) are the same in every scheme
        owner = path[: -len(OBSERVER) - 1]
        q = _qparams(user[owner]) if owner in user else None
        if q is None:
            raise PipelineError(f"int8 has no quantized module at {owner or 'the root'} where the float model's "
                                f"quantized layer is ({type(user.get(owner)).__name__ if owner in user else 'missing'}), "
                                f"so its range cannot be re-derived; {FIX}")
        found.append(Activation(path, path if path in user else owner, *q))
    return found


def refuse_foreign_weights(int8: torch.nn.Module, prepared: torch.nn.Module, rtol: float = 1e-3) -> None:
    """Raise one sentence unless each quantized weight of `int8` rounds the float twin's (within half a step): the
    re-derived model re-quantizes the float weights, so they must be the ones the user's model was converted from."""
    floats = dict(prepared.named_modules())
    for name, m in int8.named_modules():
        w = _quantized_weight(m)
        if w is None or name not in floats:
            continue
        ref = _float_weight(floats[name])
        scale = w.q_per_channel_scales() if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric) \
            else torch.tensor([w.q_scale()])
        steps = ((w.dequantize() - ref).abs().reshape(len(ref), -1) /
                 scale.reshape(-1, 1).to(ref.dtype)).max().item() if ref is not None and ref.shape == w.shape else None
        if steps is None or steps > 0.5 * (1 + rtol) + 1e-4:
            raise PipelineError(f"int8's weights at {name} are not the float model's rounded "
                                f"({'shape differs' if steps is None else f'{steps:.1f} steps apart'}); pass the float "
                                f"model int8 was converted from as fp32 (or as float_twin= after QAT)")


def _float_weight(module: torch.nn.Module) -> Optional[torch.Tensor]:
    """The float weight of a prepared (fused) layer: its own, or its first child's (ConvReLU2d holds the conv)."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.detach()
    first = next(iter(module.children()), None)
    return first.weight.detach() if first is not None and isinstance(getattr(first, "weight", None), torch.Tensor) else None


def observe(int8: torch.nn.Module, prepared: torch.nn.Module, acts: list[Activation],
            batches: Iterable[torch.Tensor], keep: int) -> tuple[dict, list, Optional[np.ndarray]]:
    """One pass over `batches`: the range of each of the user's quantized activations ({observer path: (min, max)},
    dequantized, so within the user's own scale and zero point), the prepared twin calibrated (its other observers),
    and the first `keep` images with the user's logits on them."""
    ranges = {a.observer: [0.0, 0.0] for a in acts}  # torch.ao's ranges always hold 0
    user = dict(int8.named_modules())

    def hook(path):
        def record(_module, _inputs, out):
            x = out.dequantize() if out.is_quantized else out
            r = ranges[path]
            r[0], r[1] = min(r[0], float(x.min())), max(r[1], float(x.max()))
        return record

    handles = [user[a.module].register_forward_hook(hook(a.observer)) for a in acts]
    kept, user_logits = [], []
    try:
        with torch.no_grad(), quantized_api():
            for x in batches:
                out = int8(x)
                prepared(x)
                if sum(len(b) for b in kept) < keep:
                    kept.append(x[: keep - sum(len(b) for b in kept)])
                    user_logits.append(out[: len(kept[-1])].float().numpy())
    finally:
        for h in handles:
            h.remove()
    return ranges, kept, np.concatenate(user_logits) if user_logits else None


def seed(prepared: torch.nn.Module, ranges: dict) -> None:
    """Set each range observer of `prepared` to the user's range (in place); torch.ao's symmetric formula then gives
    scale max(|min|, |max|) / 127.5 at quint8 zero point 128 when it converts."""
    observers = dict(prepared.named_modules())
    for path, (lo, hi) in ranges.items():
        obs = observers[path]
        obs.min_val, obs.max_val = torch.tensor(lo), torch.tensor(hi)


def convert_faithful(prepared: torch.nn.Module, example: torch.Tensor, engine: str = AUTO) -> torch.nn.Module:
    """Convert on the first engine of candidate_engines(engine) that runs the model (weights are packed per engine)."""
    failures = []
    for name in candidate_engines(engine):
        torch.backends.quantized.engine = name
        model = convert_copy(prepared)
        try:
            with torch.no_grad():
                model(example[:1])
            return model
        except (RuntimeError, NotImplementedError) as exc:
            failures.append(f"the {name} engine: {str(exc).strip().splitlines()[0][:160]}")
    raise PipelineError(f"the re-derived INT8 model does not run ({'; '.join(failures)}); {FIX}")


def requantization_check(user: np.ndarray, derived: np.ndarray, fp32: np.ndarray, inputs: str) -> Check:
    """How much farther from FP32 the re-derived model is than the user's, with the figures behind it."""
    d_user, d_derived = relative_distance(user, fp32), relative_distance(derived, fp32)
    ratio = d_derived / max(d_user, 1e-12)
    return Check(
        "requantization", ratio, f"<= {REQUANTIZATION_RATIO_MAX:g}", ratio <= REQUANTIZATION_RATIO_MAX,
        detail=(f"int8 re-derived in TensorRT's symmetric scheme vs FP32, over the given int8 vs FP32, relative logit "
                f"distance {d_derived:.4f} vs {d_user:.4f} on {len(fp32)} {inputs}; argmax agreement with the given "
                f"int8 {argmax_agreement(derived, user):.2%}"),
        fix=("re-deriving int8's activation ranges as symmetric costs more than TensorRT's halved steps explain; "
             + FIX),
        figures={"distance_rederived_fp32": d_derived, "distance_given_fp32": d_user,
                 "distance_rederived_given": relative_distance(derived, user),
                 "argmax_rederived_given": argmax_agreement(derived, user),
                 "argmax_rederived_fp32": argmax_agreement(derived, fp32),
                 "argmax_given_fp32": argmax_agreement(user, fp32), "images": len(fp32), "inputs": inputs})


def to_project_scheme(int8: torch.nn.Module, fused: torch.nn.Module, batches: Iterable[torch.Tensor],
                      example: torch.Tensor, images: Optional[list] = None, engine: str = AUTO,
                      float_twin: Optional[torch.nn.Module] = None) -> tuple[torch.nn.Module, Check]:
    """The given INT8 model in the project's TensorRT scheme, and the `requantization` check.

    `int8`: converted by the user for the current quantized engine; `fused`: the fused FP32 model, its float twin
    unless `float_twin` (fused, as quantize_qat's float_model, or not) is given; `batches`: the
    calibration images (float NCHW) its ranges are observed on; `images`: held-out images to measure the added error
    on (else the first MEASURE_IMAGES calibration images). A model whose every zero point maps exactly to int8 zero
    point 0 is returned as is; otherwise the re-derived model is converted on a faithful engine (`engine`, as
    QuantizeConfig.engine), which it leaves selected.
    """
    refuse_if_not_running(int8, example)
    asymmetric = asymmetric_layers(int8)
    if not asymmetric:
        return int8, Check("requantization", None, "not needed", True,
                           detail="int8's activations and weights are symmetric (zero point 128 quint8 or 0): used as is")
    if len(as_args(example)) > 1:
        raise PipelineError(f"int8 has affine activations ({asymmetric[0]}, ...) to re-derive as symmetric, which is "
                            f"done for models with one input only; {FIX}")
    prepared = prepare_for(fused if float_twin is None else _fused(float_twin, example), "quint8", "minmax")
    acts = activations(int8, prepared)
    refuse_foreign_weights(int8, prepared)
    ranges, kept, user_logits = observe(int8, prepared, acts, batches, 0 if images else MEASURE_IMAGES)
    if images:
        user_logits = _logits(int8, images)
    seed(prepared, ranges)
    with quantized_api():
        derived = convert_faithful(prepared, example, engine)
    measured = images or kept
    check = requantization_check(user_logits, _logits(derived, measured), _logits(fused, measured),
                                 "held-out images" if images else "calibration images")
    derived.requantized = {"asymmetric_layers": asymmetric, "ranges": ranges}
    return derived, check


def _fused(float_twin: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """`float_twin` fused: as given when it holds fused modules already (QAT's twin is), else through fuse_model."""
    if any(isinstance(m, _FusedModule) for m in float_twin.modules()):
        return float_twin.eval().cpu()
    return fuse(float_twin.eval().cpu(), tuple(example.shape[1:]))[0]


def _logits(model: torch.nn.Module, batches: list) -> np.ndarray:
    """The model's outputs on `batches`, all outputs of a multi-output model flattened side by side per sample."""
    with torch.no_grad(), quantized_api():
        return np.concatenate([np.concatenate([o.float().reshape(len(o), -1).numpy()
                                               for o in as_outputs(model(*as_args(x)))], axis=1) for x in batches])


def load_int8_model(path, engine: str = AUTO) -> torch.nn.Module:
    """A converted INT8 eager model saved whole with torch.save(model), unpickled with its weights packed for the
    engine candidate_engines(engine) picks first (which it leaves selected). Unpickling runs code from the file: load
    only files you trust. A state_dict is refused: rebuilding a converted model needs the user's qconfig."""
    from pathlib import Path

    from ..inputs import check_int8_model
    from .engines import select_engine

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"int8 model {path} does not exist; pass a file written by torch.save(int8_model)")
    select_engine(engine)  # quantized weights are packed for the current engine as they are unpickled
    try:
        with quantized_api():
            model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling raises whatever the pickled classes raise
        raise PipelineError(f"int8 model {path} cannot be loaded ({type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}); save the converted "
                            f"model whole with torch.save(int8_model, path), its classes importable here") from None
    if isinstance(model, dict):
        raise PipelineError(f"int8 model {path} is a state_dict; save the converted model whole with "
                            f"torch.save(int8_model, path) (a converted state_dict cannot be rebuilt without its qconfig)")
    if isinstance(model, torch.nn.Module):
        # torch's quantized Conv __setstate__ skips Module.__init__, so an unpickled one has no _modules and
        # model.modules() fails; its __deepcopy__ builds it properly (torch 2.14.1)
        model = copy.deepcopy(model)
    return check_int8_model(model, f"int8 model {path}").eval()
