"""ONNX helpers shared by the rewriter (surgery), the checker (lint) and the verifiers.

Neutral ground: the lint must not import the code it checks, so what both need lives here.
"""

from collections import Counter
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from ..errors import PipelineError
from .ops import QDQ



def load_onnx(path: Path) -> onnx.ModelProto:
    """Load and check an ONNX file, turning every failure into one sentence."""
    path = Path(path)
    if path.is_dir():
        raise PipelineError(f"{path} is a directory, not an ONNX file; pass the path of the .onnx file inside it")
    if not path.is_file():
        raise PipelineError(f"{path} does not exist; run resnet_torch.py first, or pass the path of an existing ONNX file")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, checker ValidationError, truncated files
        raise PipelineError(f"{path} is not a valid ONNX model ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120] if str(exc) else 'unreadable'}); re-export it") from None
    if not model.graph.node:
        raise PipelineError(f"{path} holds an empty ONNX graph; re-export the model")
    return model


def is_quantized(model: onnx.ModelProto) -> bool:
    """Whether the graph carries Q/DQ nodes (read from the model, never from its file name)."""
    return any(n.op_type in QDQ for n in model.graph.node)


def op_counts(graph: gs.Graph) -> Counter:
    return Counter(node.op for node in graph.nodes)


def is_qdq(node: gs.Node) -> bool:
    return node.op in QDQ


def qdq_nodes(graph: gs.Graph) -> list:
    return [n for n in graph.nodes if is_qdq(n)]


def zero_point(node: gs.Node):
    """The node's zero point as a Constant, or None if it is absent (ONNX then means uint8 0)."""
    return node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] is not None else None


def fold_constant_inputs(graph: gs.Graph) -> int:
    """Fold Constant, ConstantOfShape and Cast chains (zero points) into initializers; Q/DQ are kept."""
    before = len(graph.nodes)
    graph.fold_constants(should_exclude_node=is_qdq).cleanup()
    return before - len(graph.nodes)


# --- the interface every stage feeds: one float32 NCHW image input, one float32 [batch, classes] output ----------

def _type_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "untyped"


def _dims(value: onnx.ValueInfoProto) -> list:
    """Each dimension as an int (fixed), a str (symbolic) or None (unknown); None for an unknown rank."""
    t = value.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def graph_inputs(model: onnx.ModelProto) -> list:
    """The graph inputs a caller feeds (older IR versions also list initializers as inputs)."""
    inits = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def output_width(model: onnx.ModelProto):
    """The fixed last dimension of the first output (the number of classes), or None when symbolic."""
    dims = _dims(model.graph.output[0]) if model.graph.output else None
    return dims[-1] if dims and isinstance(dims[-1], int) and dims[-1] > 0 else None


def _check_float32(value: onnx.ValueInfoProto, role: str, name: str) -> None:
    elem = value.type.tensor_type.elem_type
    if elem == onnx.TensorProto.FLOAT:
        return
    if elem == onnx.TensorProto.FLOAT16:
        raise PipelineError(f"{name}'s {role} {value.name!r} is float16, but images are fed and logits read as "
                            f"float32; convert with float32 I/O kept (eager2trt.graph.fp16.to_fp16 keeps them)")
    raise PipelineError(f"{name}'s {role} {value.name!r} is {_type_name(elem)}, not float32; export the model "
                        f"with a float32 {role}")


def _check_input(value: onnx.ValueInfoProto, name: str, batch_size) -> None:
    _check_float32(value, "input", name)
    dims = _dims(value)
    if dims is not None and len(dims) != 4:
        raise PipelineError(f"{name}'s input {value.name!r} has rank {len(dims)} ({dims}), not 4; this project "
                            f"feeds NCHW image batches")
    batch = dims[0] if dims else None
    if isinstance(batch, int) and batch > 0 and batch != batch_size:
        fed = f"batches of {batch_size}" if batch_size else "batches of any size (the last one partial)"
        raise PipelineError(f"{name}'s input {value.name!r} has a fixed batch dimension of {batch}, but this "
                            f"stage feeds {fed}; re-export it with a dynamic batch dimension "
                            f"(torch.onnx.export(..., dynamic_axes={{{value.name!r}: {{0: 'batch'}}}}))")


def _check_output(value: onnx.ValueInfoProto, name: str, num_classes) -> None:
    _check_float32(value, "output", name)
    dims = _dims(value)
    if dims is not None and len(dims) != 2:
        raise PipelineError(f"{name}'s output {value.name!r} has rank {len(dims)} ({dims}), not [batch, classes]; "
                            f"export the classifier's logits")
    width = dims[-1] if dims else None
    if num_classes is not None and isinstance(width, int) and width > 0 and width != num_classes:
        raise PipelineError(f"{name}'s output {value.name!r} has {width} classes but the labels have "
                            f"{num_classes}; pass a model trained for these {num_classes} classes")


def check_interface(model: onnx.ModelProto, num_classes=None, batch_size=None, name: str = "the model") -> None:
    """Raise unless `model` has exactly one float32 NCHW input whose batch dimension is dynamic (or equals
    `batch_size`, the one batch size the caller feeds), and exactly one float32 output; with `num_classes`
    also a [batch, num_classes] output. A fixed batch is refused, not worked around: evaluation loops end in a
    partial batch. `name` (e.g. a path) starts the sentence.
    """
    inputs, outputs = graph_inputs(model), list(model.graph.output)
    if len(inputs) != 1:
        raise PipelineError(f"{name} has {len(inputs)} inputs ({', '.join(v.name for v in inputs) or 'none'}); "
                            f"this project feeds one image batch, so export the model with a single input")
    if len(outputs) != 1:
        raise PipelineError(f"{name} has {len(outputs)} outputs ({', '.join(v.name for v in outputs)}); this "
                            f"project reads one logits tensor, so export the model with a single output")
    _check_input(inputs[0], name, batch_size)
    if num_classes is not None:
        _check_output(outputs[0], name, num_classes)
    else:
        _check_float32(outputs[0], "output", name)


def quantize_without_zero_point(model: onnx.ModelProto) -> list:
    """QuantizeLinear nodes without a zero point: ONNX then means uint8 zero point 0 (asymmetric)."""
    return [n for n in model.graph.node if n.op_type == "QuantizeLinear" and (len(n.input) < 3 or not n.input[2])]


def _uint8_tensors(model: onnx.ModelProto) -> set:
    """Names of tensors known to be uint8: QuantizeLinear outputs with a uint8 or no zero point, Casts to uint8,
    uint8 initializers and Constants."""
    g = model.graph
    uint8 = {t.name for t in g.initializer if t.data_type == onnx.TensorProto.UINT8}
    uint8 |= {n.output[0] for n in g.node if n.op_type == "Constant" and n.attribute
              and n.attribute[0].t.data_type == onnx.TensorProto.UINT8}
    for n in g.node:  # graph order is topological for exported models; Q zero points precede their Q
        if n.op_type == "QuantizeLinear" and (len(n.input) < 3 or not n.input[2] or n.input[2] in uint8):
            uint8.add(n.output[0])
        if n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.UINT8 for a in n.attribute):
            uint8.add(n.output[0])
    return uint8


def dequantize_without_zero_point(model: onnx.ModelProto) -> list:
    """DequantizeLinear nodes without a zero point reading uint8 data: ONNX then subtracts 0, not 128."""
    uint8 = _uint8_tensors(model)
    return [n for n in model.graph.node if n.op_type == "DequantizeLinear" and (len(n.input) < 3 or not n.input[2])
            and n.input[0] in uint8]


def refuse_missing_zero_points(model: onnx.ModelProto) -> None:
    """Stop before any rewrite on QuantizeLinear nodes without a zero point, and DequantizeLinear nodes without one
    that read uint8 data: both mean uint8 zero point 0, which no exact rewrite maps to TensorRT's symmetric int8
    (zero point 0 at mid-range, not at the bottom)."""
    bad = quantize_without_zero_point(model) + dequantize_without_zero_point(model)
    if bad:
        names = ", ".join(f"{n.name or n.output[0]} ({n.op_type})" for n in bad[:5]) + \
            (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise PipelineError(f"{names} {'has' if len(bad) == 1 else 'have'} no zero point, which "
                            f"ONNX reads as uint8 zero point 0: asymmetric, which TensorRT's symmetric int8 cannot "
                            f"represent exactly; export with torch.per_tensor_symmetric activations (quint8 zero "
                            f"point 128 or qint8 zero point 0)")
