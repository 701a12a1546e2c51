"""Small hand-built Q/DQ graphs shaped like what PyTorch's exporter emits (onnx.helper)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

C_IN, C_OUT = 2, 3


def const(name, array):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array), name))


def conv_graph(act_zp=np.uint8(128), act_dtype=np.uint8, cast_to=TensorProto.UINT8, with_cast=True,
               weight_axis=0, act_scale_count=1, opset=16, bias_int32=True) -> onnx.ModelProto:
    """input -> Q -> [Cast] -> DQ -> Conv(DQ(int8 W), bias) -> Relu -> output."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (C_OUT, C_IN, 3, 3)).astype(np.int8)
    w_scale = np.array([0.01, 0.02, 0.03], dtype=np.float32)
    act_scale = np.full(act_scale_count, 0.05, dtype=np.float32) if act_scale_count > 1 else np.float32(0.05)
    bias = np.array([100, -50, 7], dtype=np.int32)
    nodes = [const("s", act_scale), const("zp", np.asarray(act_zp, dtype=act_dtype)),
             helper.make_node("QuantizeLinear", ["input", "s", "zp"], ["q"], name="quant")]
    dq_in = "q"
    if with_cast:
        nodes.append(helper.make_node("Cast", ["q"], ["q_cast"], to=cast_to, name="cast"))
        dq_in = "q_cast"
    nodes += [helper.make_node("DequantizeLinear", [dq_in, "s", "zp"], ["x"], name="dequant"),
              const("w", w), const("ws", w_scale), const("wz", np.zeros(C_OUT, np.int8)),
              helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=weight_axis, name="w_dq")]
    conv_inputs = ["x", "wf"]
    if bias_int32:
        nodes += [const("b", bias), const("bs", w_scale * 0.05), const("shape", np.array([C_OUT], np.int64)),
                  helper.make_node("ConstantOfShape", ["shape"], ["bz0"], name="bias_zero_shape"),
                  helper.make_node("Cast", ["bz0"], ["bz"], to=TensorProto.INT32, name="bias_zero_cast"),
                  helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bf"], axis=0, name="b_dq")]
        conv_inputs.append("bf")
    nodes += [helper.make_node("Conv", conv_inputs, ["y"], pads=[1, 1, 1, 1], name="conv"),
              helper.make_node("Relu", ["y"], ["output"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, C_IN, 4, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, C_OUT, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def fp32_graph() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    model.ir_version = 8
    return model
