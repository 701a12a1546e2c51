"""saved_models/metrics.json: the one record every stage writes its figures to, read back with checks.

Each section has one writer; a reader that needs a figure gets it through `require`, which names the
file, the key and the command that writes it when anything is missing. Nothing skips a check silently.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import write_json
from ..errors import PipelineError

# section -> the command that writes it
WRITERS = {
    "pytorch": "python resnet_torch.py",
    "onnx_gs": "python onnx_gs.py",
    "onnx_gs_fast": "python onnx_gs.py --mode fast",
    "onnx_gs_fast_fp16": "python onnx_gs.py --mode fast --high-precision fp16",
    "validation": "python resnet_tensorrt.py",
    "fp16": "python resnet_torch.py --fp16-onnx",
}


def _load(path: Path) -> dict:
    """The whole file as a dict; {} when it does not exist; an error when it is unreadable."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"metrics file {path} is unreadable ({type(exc).__name__}); move it aside or pass "
                            f"--metrics with another path, then rerun the stages that write it") from None
    if not isinstance(data, dict):
        raise PipelineError(f"metrics file {path} does not hold a JSON object; move it aside or pass --metrics "
                            f"with another path")
    return data


def update(path: Path, section: str, values: dict) -> dict:
    """Merge `values` into `section` of the metrics file (created if absent), atomically; return it all.

    An unreadable file is an error, not silently replaced: it may hold other stages' figures.
    """
    if section not in WRITERS:
        raise ValueError(f"unknown metrics section {section!r}")
    data = _load(path)
    data.setdefault(section, {}).update(values)
    write_json(Path(path), data)
    return data


def require(path: Path, section: str, key: str) -> Any:
    """One recorded figure, or one sentence naming the file, the key and the command that writes it."""
    path = Path(path)
    data = _load(path)
    writer = WRITERS[section]
    if not data:
        raise PipelineError(f"{path} does not exist or is empty, so there is no {section}.{key} to compare "
                            f"against; run {writer} with the same output folder first, or pass --reference none")
    if section not in data or key not in data[section]:
        raise PipelineError(f"{path} has no {section}.{key}; run {writer} with the same output folder first, "
                            f"or pass --reference none")
    return data[section][key]


@dataclass(frozen=True)
class PyTorchAccuracy:
    """What resnet_torch.py measured on the test set, typed."""

    fp32: float
    int8: float

    @classmethod
    def read(cls, path: Path) -> "PyTorchAccuracy":
        values = [require(path, "pytorch", f"{k}_accuracy") for k in ("fp32", "int8")]
        for v, k in zip(values, ("fp32", "int8")):
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise PipelineError(f"{path} records pytorch.{k}_accuracy = {v!r}, not an accuracy in [0, 1]; "
                                    f"rerun {WRITERS['pytorch']}")
        return cls(*map(float, values))

    def of(self, which: str) -> float:
        return {"fp32": self.fp32, "int8": self.int8}[which]
