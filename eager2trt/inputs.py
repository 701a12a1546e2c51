"""Checks of the Python API's arguments, run where they enter and before anything is written.

Each message names the API argument (`calibration_batches[0]`, `fp32`, `config.engine`), never a CLI flag:
a caller of `quantize_to_tensorrt` has no flags. The pipeline calls `check_pipeline_arguments` first.
"""

import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Optional

import numpy as np
import torch

from .errors import PipelineError
from .runtime.inputs import forward_names, peek, rows

# Normalized CIFAR-10 images (ImageNet mean/std) lie in [-2.12, 2.64]; standard-normal test inputs reach about
# 6 in a few hundred thousand draws. Raw 0..255 pixels reach 255, so a batch beyond this was not normalized.
NORMALIZED_MAX_ABS = 20.0
IMAGE_CHANNELS = 3


def _describe(x) -> str:
    shape = tuple(getattr(x, "shape", ()))
    return f"{type(x).__name__} {shape}" if shape else type(x).__name__


CONVS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d)
LAYOUTS = {3: "NCL (batch, channels, length)", 4: "NCHW (batch, channels, height, width)"}


def first_conv(model: torch.nn.Module) -> tuple[str, Optional[torch.nn.Module]]:
    """(module path, module) of the model's first convolution, 1-D or 2-D, in definition order; ("", None) if none."""
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, CONVS)), ("", None))


def first_conv_channels(model: torch.nn.Module) -> int:
    """Input channels of the model's first convolution (3 for an RGB classifier), IMAGE_CHANNELS if none."""
    conv = first_conv(model)[1]
    return conv.in_channels if conv is not None else IMAGE_CHANNELS


def input_rank(model: Optional[torch.nn.Module]) -> int:
    """Dimensions of one batch the model takes: 3 (NCL) when its first convolution is 1-D, else 4 (NCHW)."""
    conv = first_conv(model)[1] if model is not None else None
    return 3 if isinstance(conv, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)) else 4


def check_model(model, name: str = "fp32") -> torch.nn.Module:
    """Raise unless `model` is an FP32 eager model ready for eager-mode static quantization: QuantStub and
    DeQuantStub inside, a fuse_model() method, real (not meta) parameters, every one finite."""
    from torch.ao.quantization import DeQuantStub, QuantStub

    from .eager.model import refuse_non_finite

    if not isinstance(model, torch.nn.Module):
        raise PipelineError(f"{name} is a {type(model).__name__}, not a torch.nn.Module; pass the FP32 model")
    kinds = {type(m).__name__ for m in model.modules()}
    if "Quantize" in kinds or any(getattr(p, "is_quantized", False) for p in model.state_dict().values()):
        raise PipelineError(f"{name} is already quantized; pass the FP32 model it was made from")
    stubs = [c.__name__ for c in (QuantStub, DeQuantStub) if not any(isinstance(m, c) for m in model.modules())]
    if stubs:
        raise PipelineError(f"{name} has no {' and no '.join(stubs)}: eager-mode static quantization needs a "
                            f"QuantStub at the start and a DeQuantStub at the end of forward(); use a "
                            f"torchvision.models.quantization model (eager2trt.eager.model.build_model) or add them")
    if not callable(getattr(model, "fuse_model", None)):
        raise PipelineError(f"{name} ({type(model).__name__}) has no fuse_model() method; add one that fuses "
                            f"conv+bn(+relu) in place with torch.ao.quantization.fuse_modules, as torchvision's "
                            f"quantizable models do")
    meta = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if meta:
        raise PipelineError(f"{name} is on the meta device ({len(meta)} tensors without data, e.g. {meta[0]}); "
                            f"materialize it first, e.g. model.to_empty(device='cpu') then load_state_dict")
    refuse_non_finite(model, name)
    return model


def check_int8_model(model, name: str = "int8") -> torch.nn.Module:
    """Raise unless `model` is a converted INT8 eager model: quantized modules inside (a converted QuantStub), no
    FakeQuantize or observer left (a QAT or calibration model not yet converted)."""
    from torch.ao.quantization import FakeQuantizeBase, ObserverBase

    from .runtime.backends import is_quantized_module

    if not isinstance(model, torch.nn.Module):
        raise PipelineError(f"{name} is a {type(model).__name__}, not a torch.nn.Module; pass the converted INT8 "
                            f"eager model, or leave {name} out to calibrate fp32")
    if any(isinstance(m, (FakeQuantizeBase, ObserverBase)) for m in model.modules()):
        raise PipelineError(f"{name} still holds FakeQuantize or observer modules (prepared, not converted); convert "
                            f"it first (torch.ao.quantization.convert(model.eval()); eager2trt.eager.qat.quantize_qat "
                            f"returns it converted)")
    if not is_quantized_module(model):
        raise PipelineError(f"{name} ({type(model).__name__}) has no quantized modules (no converted QuantStub); pass "
                            f"the converted INT8 eager model (e.g. from eager2trt.eager.qat.quantize_qat), or leave "
                            f"{name} out to calibrate fp32")
    return model


def _check_tensor(x, name: str, channels: int, chw: Optional[tuple], rank: int = 4, conv: str = "") -> torch.Tensor:
    """One batch: a CPU float32 tensor of `rank` dimensions (NCHW, or NCL for a Conv1d model) with `channels`
    channels (and `chw` when given), finite, normalized."""
    if isinstance(x, np.ndarray):
        raise PipelineError(f"{name} is a numpy array {x.shape}; pass torch tensors (torch.from_numpy(x))")
    if not isinstance(x, torch.Tensor):
        raise PipelineError(f"{name} is a {_describe(x)}, not a torch.Tensor; pass float32 NCHW image batches")
    _check_dtype(str(x.dtype).removeprefix("torch."), name)
    if x.dim() != rank:
        fix = "add the batch dimension (x.unsqueeze(0))" if x.dim() == rank - 1 else "reshape it"
        raise PipelineError(f"{name} has shape {tuple(x.shape)}, not {LAYOUTS.get(rank, f'{rank}-D')} as the "
                            f"model's first convolution{f' ({conv})' if conv else ''} takes; {fix}")
    if x.device.type != "cpu":
        raise PipelineError(f"{name} is on {x.device}; pass CPU tensors (x.cpu()): quantized models run on the CPU")
    _check_values(x.detach().numpy(), name, channels, chw, conv)
    return x


def _check_dtype(dtype: str, name: str) -> None:
    if dtype == "float32":
        return
    if dtype == "uint8":
        raise PipelineError(f"{name} is uint8 (raw pixels); pass float32 images normalized as "
                            f"eager2trt.eager.data.normalize does")
    raise PipelineError(f"{name} is {dtype}; pass float32 batches (x.float()): the FP32 model, its calibration "
                        f"and the exported graphs all compute in float32")


def _check_values(x: np.ndarray, name: str, channels: int, chw: Optional[tuple], conv: str = "") -> None:
    if x.shape[0] == 0:
        raise PipelineError(f"{name} is an empty batch (shape {x.shape}); pass batches of at least one image")
    if x.shape[1] != channels:
        hint = " (e.g. x.expand(-1, 3, -1, -1) for grayscale images)" if channels == 3 and x.shape[1] == 1 else ""
        raise PipelineError(f"{name} has {x.shape[1]} channels but the model's first convolution takes {channels}"
                            f"{f' ({conv})' if conv else ''}; pass {channels}-channel inputs{hint}")
    if chw is not None and tuple(x.shape[1:]) != tuple(chw):
        raise PipelineError(f"{name} has images of shape {tuple(x.shape[1:])}, the model was given "
                            f"{tuple(chw)}; pass images of one size throughout")
    check_finite_normalized(x, name, "pass finite images", "which looks like 0..255 pixels; normalize first "
                            "(eager2trt.eager.data.normalize: /255, then the mean and std)")


def check_finite_normalized(x: np.ndarray, name: str, finite_fix: str, normalize_fix: str) -> None:
    """Raise unless every value of `x` is finite and within NORMALIZED_MAX_ABS (normalized, not raw pixels)."""
    bad = int(x.size - np.isfinite(x).sum())
    if bad:
        raise PipelineError(f"{name} holds {bad} NaN or inf values; {finite_fix}")
    peak = float(np.abs(x).max())
    if peak > NORMALIZED_MAX_ABS:
        raise PipelineError(f"{name} reaches {peak:.4g}, {normalize_fix}")


def _iterator(batches, name: str) -> Iterator:
    if isinstance(batches, (torch.Tensor, np.ndarray)):
        raise PipelineError(f"{name} is one {_describe(batches)}; pass a list (or iterable) of batches, e.g. [x] "
                            f"or list(x.split(128))")
    try:
        return iter(batches)
    except TypeError:
        raise PipelineError(f"{name} is a {type(batches).__name__}, not a list or iterable of batches") from None


def check_batches(batches, name: str, model: Optional[torch.nn.Module] = None,
                  chw: Optional[tuple] = None) -> Iterable:
    """Float32 NCHW CPU batches, finite and normalized, with the model's channel count, all of one image size
    (`chw`, else the first batch's). For a model with several inputs a batch is a tuple of one tensor per input
    (or a dict keyed by forward()'s parameter names), each checked the same way but for the channel count. A list
    is checked at once and returned; any other iterable (a generator over 50,000 images) has its first batch
    checked now and each later one as it is drawn."""
    names = forward_names(model) if model is not None else []
    check = _check_one if len(names) <= 1 else _check_several
    it = _iterator(batches, name)
    first = next(it, None)
    if first is None:
        raise PipelineError(f"{name} is empty; pass at least one batch of real images")
    first = check(first, f"{name}[0]", model, chw, names)
    chw = chw or _shape_of(first, names)
    rest = (check(x, f"{name}[{i}]", model, chw, names) for i, x in enumerate(it, start=1))
    if isinstance(batches, Sequence):
        return [first, *rest]
    return itertools.chain([first], rest)


def _shape_of(batch, names: list) -> tuple:
    """One input's CHW, or a tuple of each input's for a multi-input batch."""
    from .runtime.inputs import as_args

    if len(names) <= 1:
        return tuple(batch.shape[1:])
    return tuple(tuple(x.shape[1:]) for x in as_args(batch, names))


def _check_one(x, name: str, model, chw, names):
    if model is None and chw is not None:  # a graph's input: its own channels and rank
        return _check_tensor(x, name, chw[0], chw, len(chw) + 1)
    channels = first_conv_channels(model) if model is not None else IMAGE_CHANNELS
    conv = first_conv(model)[0] if model is not None else ""
    return _check_tensor(x, name, channels, chw, input_rank(model), conv)


def _check_several(batch, name: str, model, shapes, names):
    """A batch of a model with several inputs: a tuple or list of one tensor per input, or a dict by name; returned
    as a tuple in forward()'s order."""
    from .runtime.inputs import as_args

    if isinstance(batch, torch.Tensor) or not isinstance(batch, (tuple, list, dict)):
        raise PipelineError(f"{name} is a {_describe(batch)}, but the model takes {len(names)} inputs "
                            f"({', '.join(names)}); pass each batch as a tuple of {len(names)} tensors, or a dict "
                            f"keyed by those names")
    missing = [n for n in names if isinstance(batch, dict) and n not in batch]
    if missing:
        raise PipelineError(f"{name} has no key {', '.join(missing)} (it has {', '.join(map(str, batch))}); key it by "
                            f"forward()'s parameter names ({', '.join(names)})")
    args = as_args(batch, names)
    if len(args) != len(names):
        raise PipelineError(f"{name} holds {len(args)} tensors, but the model takes {len(names)} inputs "
                            f"({', '.join(names)}); pass one tensor per input")
    for i, (arg, x) in enumerate(zip(names, args)):
        if shapes and isinstance(x, torch.Tensor) and tuple(x.shape[1:]) != tuple(shapes[i]):
            raise PipelineError(f"{name} input {arg} has shape {tuple(x.shape[1:])}, but the model's {arg} input was "
                                f"given {tuple(shapes[i])} (by the first calibration batch); pass the inputs in "
                                f"forward()'s order ({', '.join(names)}), each of one size throughout")
        _check_tensor(x, f"{name} input {arg}", x.shape[1] if isinstance(x, torch.Tensor) and x.dim() > 1 else 0,
                      None, x.dim() if isinstance(x, torch.Tensor) and x.dim() > 1 else 4)
    if len({len(x) for x in args}) > 1:
        raise PipelineError(f"{name}'s inputs hold different numbers of samples ({', '.join(str(len(x)) for x in args)}"
                            f"); pass the same samples of every input")
    return args  # in forward()'s order from here on, whatever the caller's structure


def check_numpy_batches(batches, name: str, channels: int = IMAGE_CHANNELS,
                        chw: Optional[tuple] = None) -> list[np.ndarray]:
    """Float32 NCHW numpy batches for onnxruntime (e.g. `check_inputs`); CPU float32 torch tensors are converted,
    other types refused naming theirs."""
    out = []
    for i, x in enumerate(_iterator(batches, name)):
        item = f"{name}[{i}]"
        if isinstance(x, torch.Tensor):
            if x.dtype != torch.float32 or x.device.type != "cpu":
                raise PipelineError(f"{item} is a {str(x.dtype).removeprefix('torch.')} torch tensor on {x.device}; "
                                    f"pass float32 numpy arrays (x.float().cpu().numpy())")
            x = x.detach().numpy()
        if not isinstance(x, np.ndarray):
            raise PipelineError(f"{item} is a {_describe(x)}; pass float32 numpy arrays of shape NCHW")
        _check_dtype(str(x.dtype), item)
        if x.ndim != 4:
            raise PipelineError(f"{item} has shape {x.shape}, not NCHW (batch, channels, height, width)")
        _check_values(x, item, channels, chw)
        chw = chw or tuple(x.shape[1:])
        out.append(np.ascontiguousarray(x))
    return out


def check_choice(value, name: str, choices) -> str:
    """`value` if it is one of `choices`, else one sentence naming the argument and the valid choices."""
    if value not in choices:
        raise PipelineError(f"{name} is {value!r}; choose one of {', '.join(map(repr, choices))}")
    return value


def check_config(config, name: str = "config") -> None:
    """The QuantizeConfig's fields: activation dtype, calibration method, quantized CPU engine."""
    from .eager.engines import AUTO, supported_engines
    from .eager.quantize import ACTIVATION_DTYPES, CALIBRATIONS

    check_choice(config.activation_dtype, f"{name}.activation_dtype", tuple(ACTIVATION_DTYPES))
    check_choice(config.calibration, f"{name}.calibration", tuple(CALIBRATIONS))
    if config.engine != AUTO:
        check_choice(config.engine, f"{name}.engine", tuple(supported_engines()))


def check_pipeline_arguments(fp32, calibration_batches, config=None, images=None, labels=None,
                             fast=None) -> tuple[Iterable[torch.Tensor], Optional[list]]:
    """Every argument of quantize_to_tensorrt, before it writes anything; returns the calibration batches (lazily
    checked when given as a generator) and `images` checked (float32 NCHW of the calibration images' shape)."""
    from .graph.placement import HIGH_PRECISIONS

    check_model(fp32)
    if fast is not None:
        check_choice(fast, "fast", HIGH_PRECISIONS + (None,))
    if config is not None:
        check_config(config)
    first, calibration = peek(check_batches(calibration_batches, "calibration_batches", fp32), "calibration_batches")
    chw = _shape_of(first, forward_names(fp32))
    checked = None if images is None else list(check_batches(images, "images", fp32, chw))
    if labels is not None and checked is not None and len(labels) != sum(rows(b) for b in checked):
        raise PipelineError(f"labels has {len(labels)} entries for {sum(rows(b) for b in checked)} images; pass one "
                            f"label per image")
    if labels is not None and checked is None:
        raise PipelineError("labels were given without images; pass the images they label")
    return calibration, checked


# --- the main job (scripts/run_pipeline.sh): quantize a checkpoint or train, said aloud ----------------------
# These name the script's settings and resnet_torch.py's flags on purpose: they decide for the script.

TRAINING_FLAGS = ("--epochs", "--lr", "--momentum", "--weight-decay", "--milestones", "--train-subset",
                  "--save-every", "--restart", "--no-fast", "--compile-mode", "--seed")


def pipeline_model_source(checkpoint, train: bool, flags: list) -> tuple[str, str]:
    """("checkpoint" or "train", a notice to print) for the main job; raises when training options are given but
    the checkpoint would be quantized (they would be ignored without a word)."""
    from pathlib import Path

    checkpoint = Path(checkpoint)
    if train:
        return "train", f"note: TRAIN=1: training from scratch ({checkpoint} is not used)"
    given = [f.split("=")[0] for f in flags if str(f).split("=")[0] in TRAINING_FLAGS]
    if checkpoint.is_file():
        if given:
            raise PipelineError(f"training options {', '.join(dict.fromkeys(given))} were given, but {checkpoint} "
                                f"exists and will be quantized and nothing trained; set TRAIN=1 to train from "
                                f"scratch, or leave the options out")
        return "checkpoint", f"note: quantizing {checkpoint} (TRAIN=1 trains from scratch instead)"
    return "train", (f"note: no checkpoint at {checkpoint}: training from scratch (set CHECKPOINT to quantize an "
                     f"existing one, e.g. saved_models/resnet_cifar10.pt)")


def _main(argv: list) -> None:
    """`python -m eager2trt.inputs model-source CHECKPOINT TRAIN [resnet_torch.py flags...]`: print the main job's
    model source ("checkpoint" or "train") on stdout and its notice on stderr, or stop with the sentence (exit 2)."""
    if len(argv) < 3 or argv[0] != "model-source" or argv[2] not in ("0", "1"):
        raise PipelineError("usage: python -m eager2trt.inputs model-source CHECKPOINT TRAIN(0|1) [flags...]")
    source, notice = pipeline_model_source(argv[1], argv[2] == "1", argv[3:])
    print(notice, file=sys.stderr)
    print(source)


if __name__ == "__main__":
    from .errors import run_cli

    run_cli(lambda: _main(sys.argv[1:]))
