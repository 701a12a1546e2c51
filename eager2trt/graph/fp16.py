"""FP16 ONNX for strongly typed TensorRT (11 has no --fp16): onnxconverter-common, float32 I/O kept."""

from pathlib import Path

import onnx

from .. import contract
from ..errors import PipelineError
from .onnx_utils import load_onnx

def refuse_quantized(model: onnx.ModelProto, path: Path) -> None:
    """Stop on a Q/DQ model: onnxconverter-common would make its scales float16, which DequantizeLinear
    rejects (onnx.checker and onnxruntime both fail); an INT8 model needs no FP16 copy anyway."""
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    if qdq:
        raise PipelineError(f"{path} is a quantized model ({qdq} QuantizeLinear/DequantizeLinear nodes); FP16 "
                            f"conversion takes the FP32 ONNX, e.g. --input {contract.OUTPUT_DIR / contract.FP32_ONNX}")


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Convert weights and compute to float16 while keeping float32 input and output for users."""
    import warnings

    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per tiny weight clamped to float16's range
        return float16.convert_float_to_float16(model, keep_io_types=True)
