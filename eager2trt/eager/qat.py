"""Eager-mode quantization-aware fine-tuning in the project's TensorRT scheme, converted to the same kind of
INT8 model as post-training quantization (eager/quantize.py), so export and rewriting work exactly as for PTQ.

The recipe (torch.ao.quantization's eager QAT, as in torchvision's references/classification/train_quantization.py):
fuse with `fuse_model(is_qat=True)` (Conv+BN kept as QAT modules that fold BatchNorm into the fake-quantized
weight), `prepare_qat` with FakeQuantize around the project's own observers (per-channel symmetric int8 weights
in [-127, 127], per-tensor symmetric activations), calibrate them on real batches exactly as PTQ does (fake
quantization off, eval mode: the observers see the float model's activations), then fine-tune from the FP32
weights with the activation ranges fixed at the calibrated ones and BatchNorm statistics frozen, so training
and inference compute the same quantized function; only the weights (re-observed every step) learn.
"""

import copy
import warnings
from dataclasses import dataclass, replace
from typing import Iterable, Optional

import torch
from torch.ao import quantization as tq
from torch.ao.nn import qat as nnqat
from torch.ao.nn.intrinsic import qat as nniqat

from ..errors import PipelineError, require_int
from . import distributed
from .data import Split
from .engines import DEFAULT_ENGINE, candidate_engines, computes_conv_transpose
from .layers import CONV_TRANSPOSE, find_islands, has_conv_transpose, wrap_islands
from .quantize import _cannot_run, _convert_failure, _prepare_failure, _run_failure, per_tensor_weights, qconfig
from .quiet import quantized_api
from .train import History, Recipe, train

# Fine-tuning a converged model: 1% of the reference's from-scratch rate (0.1), constant (no milestones); the
# reference's momentum and weight decay. Plain fp32 steps (no bf16 autocast or torch.compile around fake quant).
QAT_LR = 1e-3
# The QAT modules with weights (and BatchNorm): convert quantizes each from its folded float weights (to_float()).
QAT_MODULES = (nniqat.ConvBn1d, nniqat.ConvBn2d, nniqat.ConvBn3d, nniqat.ConvBnReLU1d, nniqat.ConvBnReLU2d,
               nniqat.ConvBnReLU3d, nniqat.ConvReLU1d, nniqat.ConvReLU2d, nniqat.ConvReLU3d, nniqat.LinearReLU,
               nniqat.LinearBn1d, nnqat.Conv1d, nnqat.Conv2d, nnqat.Conv3d, nnqat.Linear)


def qat_qconfig(activation_dtype: str = "quint8", calibration: str = "histogram") -> tq.QConfig:
    """FakeQuantize around the observers of eager/quantize.py's qconfig: the same scheme, simulated in training."""
    ptq = qconfig(activation_dtype, calibration)
    return tq.QConfig(activation=tq.FakeQuantize.with_args(observer=ptq.activation),
                      weight=tq.FakeQuantize.with_args(observer=ptq.weight))


def qat_recipe(epochs: int, lr: float = QAT_LR, batch_size: int = 128, seed: int = 0,
               train_subset: Optional[int] = None) -> Recipe:
    """The training recipe of a QAT fine-tune: `epochs` at a constant `lr`."""
    return Recipe(epochs=epochs, batch_size=batch_size, lr=lr, milestones=(), seed=seed, train_subset=train_subset,
                  fast=False, compile_mode=None)


def prepare(fp32: torch.nn.Module, activation_dtype: str = "quint8", calibration: str = "histogram") -> torch.nn.Module:
    """A fused (is_qat), fake-quantized copy of `fp32` in training mode; `fp32` is left untouched."""
    model = copy.deepcopy(fp32).cpu().train()
    if not hasattr(model, "fuse_model"):
        raise PipelineError(f"{type(model).__name__} has no fuse_model(); QAT needs torchvision's quantizable-model "
                            f"contract (QuantStub/DeQuantStub, FloatFunctional, fuse_model(is_qat))")
    model.fuse_model(is_qat=True)
    islands = find_islands(model)
    wrap_islands(model, islands)  # the layer table's float islands, as PTQ keeps them (eager/layers.py)
    model.float_islands = islands
    model.qconfig = qat_qconfig(activation_dtype, calibration)
    for m in model.modules():  # eager prepare refuses per-channel ConvTranspose weights, as in PTQ
        if isinstance(m, CONV_TRANSPOSE) and not hasattr(m, "qconfig"):
            m.qconfig = tq.QConfig(activation=model.qconfig.activation, weight=tq.FakeQuantize.with_args(
                observer=per_tensor_weights(qconfig(activation_dtype, calibration)).weight))
    try:
        tq.prepare_qat(model, inplace=True)
    except Exception as exc:  # torch.ao raises AssertionError, RuntimeError... for a layer it cannot fake-quantize
        raise PipelineError(_prepare_failure(model, exc)) from None
    return model


def _activation_fake_quants(model: torch.nn.Module) -> list[tq.FakeQuantizeBase]:
    """Every FakeQuantize but the weights' (QAT modules keep those as `weight_fake_quant`)."""
    return [m for name, m in model.named_modules() if isinstance(m, tq.FakeQuantizeBase)
            and not name.endswith("weight_fake_quant")]


def calibrate(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Set the activation ranges from `batches` as PTQ does, then fix them for training; returns one image of them
    (for the run check after conversion)."""
    model.eval()  # BatchNorm uses its running statistics, as in inference
    model.apply(tq.disable_fake_quant)
    model.apply(tq.enable_observer)
    batches = [x.cpu() for x in batches]
    # one process: every batch, as calibration.calibrate runs them; under torchrun each rank's share, the observers
    # then merged across ranks (and FakeQuantize's cached scales with them), so every rank trains with the same ranges
    distributed.calibrate(model, batches, desc="calibrating (QAT)")
    example = batches[0][:1]
    model.apply(tq.enable_fake_quant)
    for fq in _activation_fake_quants(model):
        fq.disable_observer()
    model.apply(nniqat.freeze_bn_stats)
    return example


def convert(model: torch.nn.Module, example: torch.Tensor, activation_dtype: str = "quint8",
            engine: str = DEFAULT_ENGINE) -> torch.nn.Module:
    """The INT8 eager model (quantized modules, BatchNorm folded), as eager/quantize.py's quantize returns: converted
    for the first faithful engine that runs it on `example`."""
    failures, candidates = [], candidate_engines(engine)
    if has_conv_transpose(model):
        candidates = [e for e in candidates if computes_conv_transpose(e)]
        if not candidates:
            raise PipelineError(f"no quantized engine of this machine ({engine}) computes ConvTranspose as the Q/DQ "
                                f"graph does (engines.conv_transpose_error); quantize this model with calibration "
                                f"instead (eager2trt.pipeline.quantize_to_tensorrt), which keeps it in float")
    for name in candidates:
        torch.backends.quantized.engine = name
        int8 = copy.deepcopy(model).cpu().eval()
        with warnings.catch_warnings(), quantized_api():
            warnings.filterwarnings("ignore", message="must run observer before calling calculate_qparams")
            try:
                tq.convert(int8, inplace=True)
            except (ValueError, RuntimeError, AssertionError, NotImplementedError) as exc:  # torch.ao's from_float
                raise PipelineError(_convert_failure(model, exc)) from None
            failure = _run_failure(int8, example)
        if failure is None:
            return int8
        failures.append(f"the {name} engine cannot run this model ({failure})")
    raise PipelineError(_cannot_run(failures, activation_dtype))


def float_twin(model: torch.nn.Module) -> torch.nn.Module:
    """The float model a fine-tuned QAT `model` converts from: each QAT Conv/Linear (with its BatchNorm) replaced by
    its to_float() (BatchNorm folded as convert folds it), fake quantization and observers off. Its weights are what
    the INT8 model's round to, and its biases the unrounded ones: the FP32 checkpoint's no longer are, after
    fine-tuning. The fast and fallback graphs of a QAT model carry these biases (pipeline: float_twin=)."""
    twin = copy.deepcopy(model).cpu().eval()
    twin.apply(tq.disable_fake_quant)
    twin.apply(tq.disable_observer)

    def swap(module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, QAT_MODULES):
                setattr(module, name, child.to_float().eval())
            else:
                swap(child)

    swap(twin)
    return twin


@dataclass
class QATResult:
    """quantize_qat's outcome: the INT8 model, the training history and the float twin (float_twin())."""

    int8: torch.nn.Module
    history: History
    float_model: torch.nn.Module


def quantize_qat(fp32: torch.nn.Module, calib_batches: Iterable[torch.Tensor], train_split: Split,
                 test_split: Split, epochs: int, recipe: Optional[Recipe] = None, activation_dtype: str = "quint8",
                 calibration: str = "histogram", engine: str = DEFAULT_ENGINE,
                 device: Optional[torch.device] = None) -> QATResult:
    """Fuse, fake-quantize and calibrate the unfused FP32 model `fp32` on `calib_batches`, fine-tune it `epochs` on
    `train_split` (eager/train.py's loop, tested on `test_split` after each epoch), and convert it to INT8.

    `recipe` defaults to qat_recipe(epochs); `device` to CUDA when available. Returns the INT8 model, the
    training history and the fine-tuned float twin (pass it on as quantize_to_tensorrt(..., float_twin=))."""
    require_int("epochs", epochs)
    recipe = replace(recipe, epochs=epochs) if recipe is not None else qat_recipe(epochs)
    model = prepare(fp32, activation_dtype, calibration)
    example = calibrate(model, calib_batches)
    history = train(model, train_split, test_split, recipe, device=device)
    return QATResult(convert(model, example, activation_dtype, engine), history, float_twin(model))
