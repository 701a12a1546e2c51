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

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PipelineError

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


def _refuse(path: Path, problem: str) -> PipelineError:
    return PipelineError(f"layer info {path} {problem}, so it is not what trtexec --exportLayerInfo writes; pass "
                         f"that file (scripts/build_engines.sh writes one beside each engine)")


def _check_tensors(path: Path, where: str, tensors) -> None:
    if not isinstance(tensors, list) or not all(isinstance(t, dict) for t in tensors):
        raise _refuse(path, f"has {where} that is not a list of tensor objects")
    for t in tensors:
        if not isinstance(tensor_type(t) or "", str) or not isinstance(t.get("Name", ""), str):
            raise _refuse(path, f"has a tensor in {where} whose \"Name\" or type is not a string")


def _check_layers(path: Path, layers: list) -> None:
    """Every layer an object with a string "Name" and a string LayerType or ParameterType; tensor lists well formed."""
    for i, layer in enumerate(layers):
        kind = layer.get("ParameterType") or layer.get("LayerType")
        if not isinstance(layer.get("Name"), str) or not isinstance(kind, str):
            raise _refuse(path, f"has a layer (number {i}) without a \"Name\" and a \"LayerType\" or "
                                f"\"ParameterType\" string")
        for key in ("Inputs", "Outputs"):
            if key in layer:
                _check_tensors(path, f"the {key} of layer {layer['Name']!r}", layer[key])


def _check_io(path: Path, data: dict) -> None:
    if "I/O Tensors" in data:
        _check_tensors(path, '"I/O Tensors"', data["I/O Tensors"])
    elif not isinstance(data.get("Bindings", []), list) or \
            not all(isinstance(b, str) for b in data.get("Bindings", [])):
        raise _refuse(path, 'has "Bindings" that are not a list of tensor names')


def load_layer_info(path: Path) -> dict:
    """The parsed JSON, checked to be an engine inspector's layer list, or one sentence saying why not."""
    path = Path(path)
    if path.is_dir():
        raise PipelineError(f"layer info {path} is a directory; pass the JSON file trtexec --exportLayerInfo wrote "
                            f"(e.g. resnet_cifar10_int8_layer_info.json inside it)")
    if not path.is_file():
        raise PipelineError(f"layer info {path} does not exist; scripts/build_engines.sh writes it next to each "
                            f"engine (trtexec --exportLayerInfo)")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"layer info {path} is not valid JSON ({exc}); rebuild the engine with "
                            f"scripts/build_engines.sh") from None
    except RecursionError:  # arrays nested thousands deep exhaust the decoder's recursion
        raise _refuse(path, "nests arrays or objects too deeply to read") from None
    except OSError as exc:
        raise PipelineError(f"cannot read layer info {path} ({exc.strerror}); check its permissions") from None
    layers = data.get("Layers") if isinstance(data, dict) else None
    if not isinstance(layers, list) or not layers:
        raise PipelineError(f"layer info {path} has no \"Layers\" list; pass the file trtexec --exportLayerInfo wrote")
    if all(isinstance(layer, str) for layer in layers):
        raise PipelineError(f"layer info {path} lists layer names only; rebuild the engine with "
                            f"--profilingVerbosity=detailed (scripts/build_engines.sh passes it)")
    if not all(isinstance(layer, dict) for layer in layers):
        raise _refuse(path, 'has a "Layers" list that mixes objects with other values')
    _check_layers(path, layers)
    _check_io(path, data)
    return data


def layer_kind(layer: dict) -> str:
    """The operation a layer runs: ParameterType, else LayerType (as TensorRT Engine Explorer does), its kernel
    family (CaskConvolution, PointWiseV2) read as the operation it names."""
    if layer.get("ParameterType"):
        return layer["ParameterType"]
    kind = layer.get("LayerType", "")  # kernel families: CaskConvolution, PointWiseV2, ...
    return next((k for k in (CONVOLUTION, *POINTWISE) if kind.endswith(k) or kind.startswith(k)), kind)


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
