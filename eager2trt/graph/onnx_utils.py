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
