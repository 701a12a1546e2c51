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


class QdqBuilder:
    """Builds small post-export Q/DQ graphs (initializers, per-channel int8 weights, per-tensor activations)."""

    def __init__(self, zp=np.int8(0)):
        self.nodes, self.inits, self.zp, self.n = [], [], zp, 0
        self.add_init("zp", np.asarray(zp))

    def name(self, prefix):
        self.n += 1
        return f"{prefix}{self.n}"

    def add_init(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, **attrs):
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{out}_node", **attrs))
        return out

    def qdq(self, x, scale=0.05, zp=None):
        """x -> Q -> DQ; `zp` overrides the builder's zero point (e.g. a fixed uint8 0)."""
        s = self.add_init(self.name("s"), np.float32(scale))
        z = self.add_init(self.name("z"), np.asarray(zp)) if zp is not None else "zp"
        return self.node("DequantizeLinear", [self.node("QuantizeLinear", [x, s, z]), s, z])

    def conv(self, x, cin, cout, seed):
        rng = np.random.default_rng(seed)
        w = self.add_init(self.name("w"), rng.integers(-127, 128, (cout, cin, 3, 3)).astype(np.int8))
        ws = self.add_init(self.name("ws"), np.full(cout, 0.01, np.float32))
        wz = self.add_init(self.name("wz"), np.zeros(cout, np.int8))
        b = self.add_init(self.name("b"), rng.standard_normal(cout).astype(np.float32) * 0.1)
        wf = self.node("DequantizeLinear", [w, ws, wz], axis=0)
        return self.node("Conv", [x, wf, b], pads=[1, 1, 1, 1])

    def model(self, out, channels=4, classes=3, opset=16):
        """Name `out` "output"; `classes` None means a [1, channels, 4, 4] feature-map output."""
        last = next(n for n in self.nodes if out in n.output)
        last.output[list(last.output).index(out)] = "output"
        graph = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                  [1, channels, 4, 4])],
                                  [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, classes] if classes else [1, channels, 4, 4])],
                                  initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        return model


def residual_graph(downsample=False, zp=np.int8(0), head=True, skip_op=None, flat_scale=0.02) -> onnx.ModelProto:
    """A ResNet basic block as PyTorch exports it: Q/DQ on every module output, both Add inputs through Q/DQ.

    input -> Q/DQ -> conv1 -> Relu -> Q/DQ -> conv2 -> Q/DQ -> Add(., skip) -> Relu -> Q/DQ
    [-> GlobalAveragePool -> Q/DQ -> Flatten -> Q/DQ -> Gemm -> Q/DQ] -> output.
    The skip is the block input, or with `downsample` a conv of it through its own Q/DQ; `skip_op` puts
    that op (e.g. Relu) on the conv branch's place instead of conv2, which makes the Add unfusable.
    `flat_scale` is the scale of the pair after Flatten (PyTorch's quantized flatten keeps its input's, 0.02).
    """
    b, c = QdqBuilder(zp), 4
    x = b.qdq("input", 0.04)
    y = b.qdq(b.node("Relu", [b.conv(x, c, c, 1)]), 0.03)
    y = b.qdq(b.node(skip_op, [y]) if skip_op else b.conv(y, c, c, 2), 0.06)
    skip = b.qdq(b.conv(x, c, c, 3), 0.05) if downsample else x
    out = b.qdq(b.node("Relu", [b.node("Add", [y, skip])]), 0.07)
    if head:
        pooled = b.qdq(b.node("GlobalAveragePool", [out]), 0.02)
        flat = b.qdq(b.node("Flatten", [pooled], axis=1), flat_scale)
        w = b.add_init("fc_w", np.random.default_rng(4).integers(-127, 128, (3, c)).astype(np.int8))
        ws = b.add_init("fc_ws", np.full(3, 0.01, np.float32))
        wz = b.add_init("fc_wz", np.zeros(3, np.int8))
        fc_b = b.add_init("fc_b", np.array([0.1, -0.2, 0.3], np.float32))
        out = b.qdq(b.node("Gemm", [flat, b.node("DequantizeLinear", [w, ws, wz], axis=0), fc_b], transB=1), 0.1)
    return b.model(out, channels=c, classes=3 if head else None)


def hardsigmoid_graph() -> onnx.ModelProto:
    """MobileNetV3's squeeze-excite gate as exported: a Hardsigmoid whose Q/DQ has the fixed uint8 zero point 0
    (scale 1/256) next to uint8 zero point 128 pairs, feeding a Mul, then a conv."""
    b, c = QdqBuilder(np.uint8(128)), 4
    x = b.qdq("input", 0.04)
    gate = b.qdq(b.node("HardSigmoid", [b.qdq(b.conv(x, c, c, 1), 0.05)], alpha=1 / 6), 1 / 256, zp=np.uint8(0))
    y = b.qdq(b.node("Mul", [gate, x]), 0.03)
    return b.model(b.conv(y, c, c, 2), channels=c, classes=None)
