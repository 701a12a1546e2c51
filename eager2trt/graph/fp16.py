"""FP16 ONNX for strongly typed TensorRT (11 has no --fp16): onnxconverter-common, float32 I/O kept."""

from pathlib import Path

import onnx

from .. import contract
from ..errors import PipelineError

FP32_SOURCE = contract.OUTPUT_DIR / contract.FP32_ONNX


def refuse_quantized(model: onnx.ModelProto, path: Path) -> None:
    """Stop on a Q/DQ model: onnxconverter-common would make its scales float16, which DequantizeLinear
    rejects (onnx.checker and onnxruntime both fail); an INT8 model needs no FP16 copy anyway. Stop on a
    model that is FP16 already (see refuse_fp16)."""
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    if qdq:
        raise PipelineError(f"{path} is a quantized model ({qdq} QuantizeLinear/DequantizeLinear nodes); FP16 "
                            f"conversion takes the FP32 ONNX, e.g. {FP32_SOURCE}")
    refuse_fp16(model, path)


def float16_tensors(model: onnx.ModelProto) -> int:
    """How many initializers, graph inputs/outputs and Cast-to-float16 nodes are float16 already."""
    f16 = onnx.TensorProto.FLOAT16
    g = model.graph
    return (sum(t.data_type == f16 for t in g.initializer)
            + sum(v.type.tensor_type.elem_type == f16 for v in (*g.input, *g.output))
            + sum(n.op_type == "Cast" and any(a.name == "to" and a.i == f16 for a in n.attribute) for n in g.node))


def refuse_fp16(model: onnx.ModelProto, path: Path = None) -> None:
    """Stop on a model that is FP16 already: converting it again would round twice (onnxconverter-common
    refuses with a ValueError); the FP16 copy is made from the FP32 export."""
    n = float16_tensors(model)
    if n:
        name = path if path is not None else "the model"
        raise PipelineError(f"{name} is already FP16 ({n} float16 tensors or casts); FP16 conversion takes the "
                            f"FP32 ONNX, e.g. {FP32_SOURCE}")


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Convert weights and compute to float16 while keeping float32 input and output for users."""
    import warnings

    refuse_fp16(model)
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per tiny weight clamped to float16's range
        return float16.convert_float_to_float16(model, keep_io_types=True)
