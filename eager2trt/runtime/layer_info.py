"""Count what TensorRT fused, from `trtexec --exportLayerInfo` JSON (TensorRT 10 and 11).

trtexec writes the engine inspector's JSON (IEngineInspector::getEngineInformation, kJSON): {"Layers": [...]},
one object per engine layer when the engine was built with --profilingVerbosity=detailed (only names
otherwise). Each layer has "Name", "LayerType" (the kernel family: CaskConvolution, PointWiseV2, Reformat...),
"ParameterType" (the operation: Convolution, PointWise, ElementWise, Reformat...), "Inputs" and "Outputs";
TensorRT Engine Explorer (TensorRT repo, tools/experimental/trt-engine-explorer/trex) reads the same keys.
TensorRT 11 changed the schema (docs.nvidia.com/deeplearning/tensorrt/11.0.0/api/migration/
tensorrt-10x-to-11x-IEngineInspector.html): the flat "Bindings" name list became "I/O Tensors", a list of
objects with "Name", "IOMode", "DataType", ...; and each tensor's combined "Format/Datatype" string was split.
The split's new key names could not be read from the sources available to us; we read "DataType" (the name
the documented "I/O Tensors" objects use) and fall back to "Format/Datatype". The counts below use only
"Name", "LayerType", "ParameterType" and the number of "Inputs", which both schemas keep.

A residual Add that TensorRT fused into the convolution before it shows as a convolution with two inputs
(the conv input and the skip); an unfused one runs as its own PointWise layer, e.g. "PWN(Add, Relu)".
"""

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import PipelineError, run_cli

CONVOLUTION = "Convolution"
POINTWISE = ("PointWise", "ElementWise")


@dataclass
class LayerSummary:
    """What one engine's layer list says about fusion."""

    path: str
    schema: str  # "TensorRT 10" (Bindings) or "TensorRT 11" (I/O Tensors)
    layers: int
    convolutions: int
    convolutions_with_fused_add: int
    int8_convolutions: int | None  # None when the tensors carry no type we can read
    pointwise: int
    pointwise_names: list[str] = field(default_factory=list)
    io_tensors: list[str] = field(default_factory=list)


def load_layer_info(path: Path) -> dict:
    """The parsed JSON, or one sentence saying why it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"layer info {path} does not exist; scripts/build_engines.sh writes it next to each "
                            f"engine (trtexec --exportLayerInfo)")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"layer info {path} is not valid JSON ({exc}); rebuild the engine with "
                            f"scripts/build_engines.sh") from None
    layers = data.get("Layers") if isinstance(data, dict) else None
    if not isinstance(layers, list) or not layers:
        raise PipelineError(f"layer info {path} has no \"Layers\" list; pass the file trtexec --exportLayerInfo wrote")
    if not all(isinstance(layer, dict) for layer in layers):
        raise PipelineError(f"layer info {path} lists layer names only; rebuild the engine with "
                            f"--profilingVerbosity=detailed (scripts/build_engines.sh passes it)")
    return data


def layer_kind(layer: dict) -> str:
    """The operation a layer runs: ParameterType, else LayerType (as TensorRT Engine Explorer does)."""
    return layer.get("ParameterType") or layer.get("LayerType", "")


def tensor_type(tensor: dict) -> str | None:
    """A tensor's type: TensorRT 11's split-out "DataType", else TensorRT 10's "Format/Datatype" string."""
    return tensor.get("DataType") or tensor.get("Format/Datatype")


def io_tensor_names(data: dict) -> tuple[str, list[str]]:
    """The schema and the engine's I/O tensor names: TensorRT 11 "I/O Tensors" or TensorRT 10 "Bindings"."""
    if "I/O Tensors" in data:
        return "TensorRT 11", [t.get("Name", "?") for t in data["I/O Tensors"]]
    return "TensorRT 10", list(data.get("Bindings", []))


def summarize(path: Path) -> LayerSummary:
    """Count convolutions, residual Adds fused into them, and separate pointwise/elementwise layers."""
    data = load_layer_info(path)
    layers = data["Layers"]
    convs = [layer for layer in layers if layer_kind(layer) == CONVOLUTION]
    pointwise = [layer for layer in layers if layer_kind(layer) in POINTWISE]
    input_types = [tensor_type(c["Inputs"][0]) if c.get("Inputs") else None for c in convs]
    int8 = (sum("int8" in t.lower() for t in input_types if t) if any(input_types) else None)
    schema, io = io_tensor_names(data)
    return LayerSummary(path=str(path), schema=schema, layers=len(layers), convolutions=len(convs),
                        convolutions_with_fused_add=sum(len(c.get("Inputs", [])) >= 2 for c in convs),
                        int8_convolutions=int8, pointwise=len(pointwise),
                        pointwise_names=[layer.get("Name", "?") for layer in pointwise], io_tensors=io)


def format_summary(s: LayerSummary) -> str:
    """Two lines: the counts, then the names of the separate pointwise layers (if any)."""
    int8 = "?" if s.int8_convolutions is None else s.int8_convolutions
    line = (f"{s.path} ({s.schema} layer info): {s.layers} layers, {s.convolutions} fused convolutions "
            f"({int8} with INT8 input, {s.convolutions_with_fused_add} with a residual Add fused in), "
            f"{s.pointwise} separate pointwise/elementwise layers")
    return line + "".join(f"\n  separate: {name}" for name in s.pointwise_names)
