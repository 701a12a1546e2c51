"""One model definition (torchvision's quantizable classifiers), its checkpoints and its fusion."""

import copy
import sys
from pathlib import Path

import torch
from torchvision.models import quantization as qmodels

from ..contract import FP32_STATE, FUSE_ATOL, FUSE_RTOL, INT8_TORCHSCRIPT  # the reference's fused-vs-unfused check
from ..errors import PipelineError, require_choice
from ..runtime.inputs import as_args, as_outputs, random_batches

# Every torchvision quantizable classifier, plus CIFAR-stem variants (suffix _cifar) for 32x32 inputs.
ARCHS = ("resnet18", "resnet50", "resnext101_32x8d", "mobilenet_v2", "mobilenet_v2_cifar", "mobilenet_v3_large",
         "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "googlenet", "inception_v3")
# Constructor options beyond num_classes: no auxiliary heads (their extra outputs are training-only and would
# become extra graph outputs), and inputs taken as normalized (transform_input re-normalizes for ImageNet weights).
ARCH_OPTIONS = {"googlenet": {"aux_logits": False, "transform_input": False, "init_weights": True},
                "inception_v3": {"aux_logits": False, "transform_input": False, "init_weights": True}}
# The CIFAR-sized MobileNetV2 stem (as in the common CIFAR ports): the first conv and the first
# down-sampling block at stride 1, so 32x32 inputs end in 4x4 maps instead of ImageNet's 1x1. Only the
# strides of torchvision's own modules change (3x3 kernels, padding 1), so quantization and fusion are
# torchvision's; these two blocks have no residual add, so no skip connection depends on the stride.
CIFAR_STEM_STRIDE1 = {"mobilenet_v2_cifar": ("features.0.0", "features.2.conv.1.0")}


def build_model(arch: str = "resnet18", num_classes: int = 10) -> torch.nn.Module:
    """torchvision's quantizable model in float mode, randomly initialised; `_cifar` archs get stride-1 stems."""
    require_choice("arch", arch, ARCHS)
    base = arch.removesuffix("_cifar")
    model = getattr(qmodels, base)(weights=None, quantize=False, num_classes=num_classes, **ARCH_OPTIONS.get(base, {}))
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
    if Path(path).is_dir():
        raise PipelineError(f"checkpoint {path} is a directory; pass the path of a saved FP32 state_dict (e.g. "
                            f"{Path(path) / FP32_STATE})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"checkpoint {path} does not exist; pass the path of a saved FP32 state_dict") from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        if _is_torchscript(path):
            raise PipelineError(f"checkpoint {path} is a TorchScript model (e.g. the INT8 export "
                                f"{INT8_TORCHSCRIPT}), not an FP32 state_dict; pass the FP32 weights, e.g. "
                                f"{FP32_STATE}") from None
        raise PipelineError(f"checkpoint {path} is not a readable PyTorch state_dict ({type(exc).__name__}); "
                            f"re-save it with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    state = _strip_data_parallel(state, path)
    refuse_non_finite(state, f"checkpoint {path}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise PipelineError(f"checkpoint {path} does not fit {arch} with {num_classes(model)} classes "
                            f"({detail[:160]}); pass --arch and a checkpoint that match") from None
    return model


def _is_torchscript(path) -> bool:
    """A TorchScript archive is a zip holding <name>/code/ (a state_dict's zip holds data.pkl and data/ only)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _strip_data_parallel(state, path):
    """A state_dict saved from DataParallel/DistributedDataParallel prefixes every key with "module."; the
    weights are the model's own, so the prefix is dropped (said aloud)."""
    if isinstance(state, dict) and state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        print(f"note: {path} was saved from a DataParallel wrapper; reading its keys without the 'module.' prefix",
              file=sys.stderr)
        return {k.removeprefix("module."): v for k, v in state.items()}
    return state


def non_finite_tensors(named) -> list[tuple[str, int]]:
    """(name, count) of the floating-point tensors among `named` (name -> tensor) holding NaN or inf values."""
    bad = []
    for name, t in named:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not t.is_meta:
            n = int((~torch.isfinite(t)).sum())
            if n:
                bad.append((name, n))
    return bad


def refuse_non_finite(state, what: str) -> None:
    """Raise naming the tensors when a state_dict (or a module's parameters and buffers) holds NaN or inf: such
    a model computes NaN, which every later check would misreport (e.g. as "not fusable")."""
    named = state.items() if isinstance(state, dict) else [*state.named_parameters(), *state.named_buffers()]
    bad = non_finite_tensors(named)
    if bad:
        names = ", ".join(f"{n} ({c} values)" for n, c in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise PipelineError(f"{what} holds weights that are not finite (NaN or inf in {names}); the training that "
                            f"wrote it diverged: use an earlier checkpoint or retrain with a lower learning rate")


def fuse(model: torch.nn.Module, input_shape: tuple, num_checks: int = 4,
         seed: int = 0) -> tuple[torch.nn.Module, float]:
    """Return a fused copy (conv+bn+relu, conv+bn, downsample) and its max abs deviation.

    `input_shape` is one input's CHW (e.g. a calibration batch's shape[1:]), or a tuple of each input's for a
    model with several: the model's own input size, which only the caller knows. Raises when fused and unfused
    outputs (every one of them) differ beyond the reference's rtol/atol on random inputs of that shape.
    """
    model = model.eval()
    fused = copy.deepcopy(model)
    fused.fuse_model()  # torchvision: fuses every block in place, numerics unchanged
    several = bool(input_shape) and isinstance(input_shape[0], (tuple, list))
    shape = [(num_checks, *s) for s in input_shape] if several else (num_checks, *input_shape)
    x = as_args(random_batches(shape, 1, seed)[0])
    with torch.no_grad():
        try:
            ref = as_outputs(model(*x))
        except RuntimeError as exc:  # e.g. "Output size is too small" for an image below the model's minimum
            raise PipelineError(f"the FP32 model cannot run inputs of shape {tuple(input_shape)} "
                                f"({str(exc).splitlines()[0][:120]}); pass inputs of the size the model "
                                f"was built for") from None
        check_outputs(ref, num_checks)
        out = as_outputs(fused(*x))
    max_abs = max((r - o).abs().max().item() for r, o in zip(ref, out))
    # Folding BatchNorm into float32 weights changes each layer by float32 rounding of its own activations, so the
    # error of a near-zero logit scales with the largest ones (random ResNet50 at 32 px: 8e-4 beside logits of 267,
    # 4e-6 relative): the absolute tolerance grows with the output's magnitude; a wrong fusion is off by O(that).
    for r, o in zip(ref, out):
        atol = FUSE_ATOL + FUSE_RTOL * r.abs().max().item()
        if not torch.allclose(o, r, rtol=FUSE_RTOL, atol=atol):
            raise PipelineError(f"fused model deviates from the unfused one by up to {max_abs:.3g} "
                                f"(rtol {FUSE_RTOL}, atol {atol:.3g}); the model is not fusable as-is")
    return fused, max_abs


def check_outputs(outputs: list, rows: int) -> None:
    """Every output a float tensor (a tuple or dict of them for several heads) that keeps the batch dimension first
    (the graphs' batch is dynamic), finite on random inputs."""
    for i, o in enumerate(outputs):
        if not isinstance(o, torch.Tensor):
            raise PipelineError(f"output {i} of the model is a {type(o).__name__}, not a tensor; return a tensor, or "
                                f"a tuple or dict of tensors (one per head)")
        if o.dim() == 0 or o.shape[0] != rows:
            raise PipelineError(f"output {i} of the model has shape {tuple(o.shape)} for a batch of {rows}; every output "
                                f"must keep the batch dimension first (the graph's batch is dynamic): reduce over the "
                                f"other dimensions only")
        if not torch.isfinite(o).all():
            raise PipelineError("the model computes values that are not finite (NaN or inf) on random inputs, "
                                "before fusion; check its weights (eager2trt.inputs.check_model names the tensors)")


def load_factory(spec: str):
    """The function `spec` names: "package.module:function" (imported) or "path/to/file.py:function" (loaded
    from that file)."""
    import importlib
    import importlib.util

    where, sep, attr = str(spec).rpartition(":")
    if not sep or not where or not attr.isidentifier():
        raise PipelineError(f"model {spec!r} names no factory; pass module:function or path/file.py:function, e.g. "
                            f"my_models.py:make_net")
    try:
        if where.endswith(".py"):
            if not Path(where).is_file():
                raise PipelineError(f"model file {where} does not exist; pass path/file.py:function with an "
                                    f"existing file")
            spec_ = importlib.util.spec_from_file_location(Path(where).stem, where)
            module = importlib.util.module_from_spec(spec_)
            spec_.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except PipelineError:
        raise
    except Exception as exc:  # any error of the user's module while importing
        raise PipelineError(f"model module {where} could not be imported ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); fix it, or check PYTHONPATH "
                            f"for module:function") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))[:8]
        raise PipelineError(f"{where} has no function {attr} (its callables: {', '.join(found) or 'none'}); pass "
                            f"{where}:<one of them>")
    return factory


def build_user_model(spec: str, num_classes: int) -> torch.nn.Module:
    """The FP32 model the factory `spec` returns, given num_classes= when it takes that argument; raises unless it
    is a module with `num_classes` outputs (the quantizable-model contract is eager2trt.inputs.check_model's)."""
    import inspect

    factory = load_factory(spec)
    try:
        takes = "num_classes" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        takes = False
    try:
        model = factory(num_classes=num_classes) if takes else factory()
    except Exception as exc:  # the user's factory failed
        raise PipelineError(f"model factory {spec} raised {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
                            f"; fix the factory so that it returns the FP32 model") from None
    if not isinstance(model, torch.nn.Module):
        raise PipelineError(f"model factory {spec} returned a {type(model).__name__}, not a torch.nn.Module; return "
                            f"the FP32 model")
    found = num_classes_of(model)
    if found is not None and found != num_classes:
        raise PipelineError(f"the model {spec} returns has {found} outputs but the data has {num_classes} classes; "
                            f"accept num_classes in the factory (def {spec.rpartition(':')[2]}(num_classes): ...) or "
                            f"build the model with {num_classes} outputs")
    return model


def num_classes_of(model: torch.nn.Module):
    """Output features of the model's last Linear layer, None without one."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return linears[-1].out_features if linears else None
