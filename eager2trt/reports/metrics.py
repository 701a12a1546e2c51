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
    "onnx_gs_fallback": "python resnet_torch.py --fallback",
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
    for section, value in data.items():
        if section in WRITERS and not isinstance(value, dict):
            raise PipelineError(f"metrics file {path} holds a {_json_type(value)} as its {section!r} section, "
                                f"where {WRITERS[section]} writes an object of figures; move the file aside (or "
                                f"delete that section), then rerun {WRITERS[section]}")
    return data


def _json_type(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def check(path: Path) -> dict:
    """Read and validate the metrics file before any long work: the run will merge its figures into it, and
    finding it damaged only after a ten-thousand-image evaluation would waste that work. Returns its content."""
    return _load(path)


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


def recorded_agreement(path: Path):
    """(argmax agreement, samples) of PyTorch INT8 vs its graph as resnet_torch.py recorded them, or None."""
    section = _load(path).get("pytorch", {})
    rec = section.get("int8_vs_onnx_agreement") if isinstance(section, dict) else None
    if not isinstance(rec, dict) or not isinstance(rec.get("argmax_agreement"), (int, float)) \
            or not isinstance(rec.get("samples"), int):
        return None
    return float(rec["argmax_agreement"]), int(rec["samples"])
