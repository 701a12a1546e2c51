"""Load the INT8 TorchScript that resnet_torch.py writes, and say what a file is when it is not that."""

import warnings
import zipfile
from pathlib import Path

import torch

from ..contract import FP32_STATE, INT8_TORCHSCRIPT
from ..errors import PipelineError

WRITER = f"the INT8 TorchScript ({INT8_TORCHSCRIPT}) that resnet_torch.py writes beside the INT8 ONNX"


def _is_quantized(module: torch.jit.ScriptModule) -> bool:
    """A converted QuantStub (`Quantize`) inside: the model quantizes its input, so it computes in INT8."""
    return any(getattr(m, "original_name", None) == "Quantize" for m in module.modules())


def describe_file(path: Path) -> str:
    """What a file that is not TorchScript holds, in words: a state_dict, a training checkpoint, a pickle..."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for foreign files
        return "not a PyTorch file" if not zipfile.is_zipfile(path) else "a PyTorch archive that is not TorchScript"
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return "a training checkpoint (model, optimizer and scheduler states), not TorchScript"
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        quantized = any(v.is_quantized for v in obj.values())
        kind = "an INT8 state_dict" if quantized else f"an FP32 state_dict (like {FP32_STATE})"
        return f"{kind} of {len(obj)} tensors, which holds weights but no model code, not TorchScript"
    return f"a saved {type(obj).__name__}, not TorchScript"


def load_int8_torchscript(path: Path) -> torch.jit.ScriptModule:
    """The INT8 TorchScript at `path`, on the CPU, in eval mode; one sentence saying what the file is otherwise."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path} does not exist; pass {WRITER}")
    if path.stat().st_size == 0:
        raise PipelineError(f"{path} is empty (0 bytes), e.g. from an interrupted copy; pass {WRITER}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception:  # RuntimeError for archives without TorchScript code, many others for foreign files
        raise PipelineError(f"{path} is {describe_file(path)}; pass {WRITER}") from None
    if not _is_quantized(module):
        raise PipelineError(f"{path} is an FP32 TorchScript model (it has no quantized input stub); pass {WRITER}")
    return module.eval()
