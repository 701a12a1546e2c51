"""Fusion-aware placement beyond residual Adds (eager2trt.graph.placement) and the lint rules that predict what
TensorRT leaves unfused or requantizes (eager2trt.graph.lint), on hand-built graphs, failing cases included;
and the exact rewrite's typed refusal (eager2trt.graph.surgery)."""

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from eager2trt.runtime.inputs import random_batches
from eager2trt.errors import PipelineError
from eager2trt.graph import lint, ops, placement, surgery
from graph_checks import ort_equivalence
from qdq_graphs import QdqBuilder, conv_graph, hardsigmoid_graph, residual_graph


def batches():
    return random_batches((1, 4, 4, 4), 3)


def max_abs_diff(a, b) -> float:
    return ort_equivalence(a, b, batches()).figures["max_abs_diff"]


def concat_graph(shared: bool = False):
    """Two conv branches (own Q/DQ scales) -> Concat -> Q/DQ (another scale) -> conv; `shared`: the first
    branch's quantized tensor also feeds a conv of its own (a pair the Concat does not own)."""
    b = QdqBuilder()
    x = b.qdq("input", 0.04)
    relu = b.node("Relu", [b.conv(x, 4, 4, 1)])
    a = b.qdq(relu, 0.03)
    branch = b.qdq(b.node("Relu", [b.conv(x, 4, 4, 2)]), 0.06)
    y = b.qdq(b.node("Concat", [a, branch], axis=1), 0.07)
    out = b.conv(y, 8, 4, 3)
    if shared:  # a second reader of the first branch's DQ: a conv whose result joins the output
        out = b.node("Mul", [out, b.conv(a, 4, 4, 4)])
    return b.model(out, classes=None)


def pool_graph(out_scale: float = 0.03):
    """conv -> Relu -> Q/DQ -> MaxPool -> Q/DQ (`out_scale`; PyTorch keeps the input's) -> conv."""
    b = QdqBuilder()
    relu = b.node("Relu", [b.conv(b.qdq("input", 0.04), 4, 4, 1)])
    pooled = b.node("MaxPool", [b.qdq(relu, 0.03)], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    return b.model(b.conv(b.qdq(pooled, out_scale), 4, 4, 2), classes=None)


def shuffle_graph():
    """ShuffleNet's channel shuffle as exported: Q/DQ (one scale) around Reshape, Transpose, Reshape, then a conv."""
    b, s = QdqBuilder(), 0.05
    x = b.qdq(b.node("Relu", [b.conv(b.qdq("input", 0.04), 4, 4, 1)]), s)
    x = b.qdq(b.node("Reshape", [x, b.add_init("shape5", np.array([1, 2, 2, 4, 4], np.int64))]), s)
    x = b.qdq(b.node("Transpose", [x], perm=[0, 2, 1, 3, 4]), s)
    x = b.qdq(b.node("Reshape", [x, b.add_init("shape4", np.array([1, 4, 4, 4], np.int64))]), s)
    return b.model(b.conv(x, 4, 4, 2), classes=None)


def activation_graph():
    """MobileNetV3's conv -> Q/DQ -> HardSwish -> Q/DQ -> conv as exported (Hardswish quantized on its own)."""
    b = QdqBuilder()
    act = b.node("HardSwish", [b.qdq(b.conv(b.qdq("input", 0.04), 4, 4, 1), 0.05)])
    return b.model(b.conv(b.qdq(act, 0.04), 4, 4, 2), classes=None)


def perf_errors(model):
    return {k: v for k, v in lint.lint(model, performance="error").items() if any(f.level == "error" for f in v)}


# ---------------------------------------------------------------- Concat

def test_concat_inputs_take_the_output_scale_and_the_lint_sees_it():
    model = concat_graph()
    assert len(lint.lint(model, performance="warning")["concat_inputs_share_scale"]) == 2
    assert len(lint.requantizing_layers(gs.import_onnx(model))) == 2  # TensorRT: one requantize per input
    fast, report = placement.make_fast(model)
    assert report["rewrites"]["share_concat_scales"] == 2 and report["rewrites"]["drop_dangling_qdq"] == 0
    g = gs.import_onnx(fast)
    concat = next(n for n in g.nodes if n.op == "Concat")
    out_scale = float(concat.outputs[0].outputs[0].inputs[1].values)
    assert [float(placement.producer(t).inputs[1].values) for t in concat.inputs] == [out_scale, out_scale]
    assert not perf_errors(fast) and not lint.requantizing_layers(g)
    # the same numbers as a float Concat quantized once at its output (TensorRT's Q moved back across it)
    float_concat = gs.import_onnx(model)
    concat = next(n for n in float_concat.nodes if n.op == "Concat")
    concat.inputs = [placement.qdq_pair(t)[0].inputs[0] for t in concat.inputs]
    assert max_abs_diff(gs.export_onnx(float_concat.cleanup()), fast) == 0.0


def test_a_concat_input_shared_with_another_reader_keeps_its_scale_and_is_predicted():
    fast, report = placement.make_fast(concat_graph(shared=True))
    assert report["rewrites"]["share_concat_scales"] == 1  # only the pair the Concat owns
    assert not perf_errors(fast)  # nothing the placement could have done is left
    found = lint.requantizing_layers(gs.import_onnx(fast))
    assert len(found) == 1 and all(f.level == "warning" for f in found)
    assert lint.performance_summary(fast)["requantize_layers"] == 1


# ---------------------------------------------------------------- pooling

def test_maxpool_reads_its_conv_and_the_pair_moves_after_it_exactly():
    model = pool_graph()
    assert len(lint.maxpool_fusable(gs.import_onnx(model))) == 1
    g = gs.import_onnx(model)
    assert placement.commute_qdq_through_maxpool(g) == 1
    g.cleanup()
    pool = next(n for n in g.nodes if n.op == "MaxPool")
    assert placement.producer(pool.inputs[0]).op == "Relu"
    assert max_abs_diff(model, gs.export_onnx(g)) == 0.0  # max commutes with the rounding
    fast, _ = placement.make_fast(model)
    assert not perf_errors(fast) and lint.performance_summary(fast)["unfused_maxpools"] == 0


def test_maxpool_requantized_at_another_scale_is_left_and_predicted():
    model = pool_graph(out_scale=0.05)
    assert placement.commute_qdq_through_maxpool(gs.import_onnx(model)) == 0
    assert not lint.maxpool_fusable(gs.import_onnx(model))  # moving the pair would change the arithmetic
    assert len(lint.requantizing_layers(gs.import_onnx(model))) == 1


# ---------------------------------------------------------------- data movement

def test_channel_shuffle_keeps_one_pair_and_is_bit_exact():
    model = shuffle_graph()
    assert len(lint.lint(model, performance="error")["no_dangling_qdq"]) == 0  # same-scale chain: one int8 grid
    fast, report = placement.make_fast(model)
    assert report["rewrites"]["fold_qdq_after_data_movement"] == 3
    g = gs.import_onnx(fast)
    conv = [n for n in g.nodes if n.op == "Conv"][-1]
    assert placement.producer(conv.inputs[0]).op == "Reshape"  # TensorRT carries the DQ forward across the copies
    assert placement.source_dequantize(conv.inputs[0]) is not None
    assert sum(n.op == "QuantizeLinear" for n in g.nodes) == 2 and not perf_errors(fast)
    assert not lint.requantizing_layers(g)
    assert max_abs_diff(model, fast) == 0.0


# ---------------------------------------------------------------- activations (MobileNetV3)

def test_a_pair_between_conv_and_hardswish_is_flagged_and_dropped():
    model = activation_graph()
    assert [f.op for f in lint.activation_fusable(gs.import_onnx(model))] == ["HardSwish"]
    fast, report = placement.make_fast(model)
    hswish = next(n for n in gs.import_onnx(fast).nodes if n.op == "HardSwish")
    assert placement.producer(hswish.inputs[0]).op == "Conv"
    assert not perf_errors(fast) and lint.performance_summary(fast)["unfused_activations"] == 0


def test_squeeze_excite_mul_reads_the_int8_tensor_its_conv_already_writes():
    fast, _ = placement.make_fast(hardsigmoid_graph())
    g = gs.import_onnx(fast)
    mul = next(n for n in g.nodes if n.op == "Mul")
    assert sorted(placement.producer(t).op for t in mul.inputs) == ["DequantizeLinear", "HardSigmoid"]
    assert not perf_errors(fast) and lint.performance_summary(fast)["unfused_elementwise"] == 1  # the Mul itself


# ---------------------------------------------------------------- the op table

def test_the_op_table_puts_every_copy_op_in_the_look_through_set():
    assert set(ops.DATA_MOVEMENT) <= set(ops.LOOK_THROUGH) and "Relu" in ops.LOOK_THROUGH
    assert ops.data_inputs("Concat", 3) == (0, 1, 2) and ops.data_inputs("Reshape", 2) == (0,)
    assert not set(ops.COMMUTING_POOLS) & {"AveragePool", "GlobalAveragePool"}  # quantizable, not commuting


# ---------------------------------------------------------------- the exact rewrite's refusal

def test_exact_refusal_names_fixed_qparams_and_the_rewrite_raises_the_same_reason():
    model = hardsigmoid_graph()
    reason = surgery.exact_refusal(model)
    assert reason.kind == surgery.FIXED_QPARAMS and len(reason.nodes) == 2
    assert "fixed uint8 quantization" in str(reason) and "use the fast graph" in str(reason) and "\n" not in str(reason)
    with pytest.raises(surgery.ExactRefused) as exc:
        surgery.make_tensorrt_ready(model)
    assert exc.value.kind == surgery.FIXED_QPARAMS and isinstance(exc.value, PipelineError)
    fast, _ = placement.make_fast(model)  # what the pipeline writes instead
    assert not perf_errors(fast)


def test_exact_refusal_tells_asymmetric_from_fixed_and_is_none_where_exact_applies():
    asym = surgery.exact_refusal(conv_graph(act_zp=np.uint8(100)))
    assert asym.kind == surgery.ASYMMETRIC and "torch.per_tensor_symmetric" in str(asym)
    assert surgery.exact_refusal(conv_graph()) is None and surgery.exact_refusal(residual_graph()) is None
