import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto

from eager2trt.graph import lint
from eager2trt.graph import onnx_utils
from eager2trt.graph import surgery
from eager2trt.errors import PipelineError
from eager2trt.runtime.backends import ort_session
from graph_checks import ort_equivalence
from qdq_graphs import conv_graph, fp32_graph


def graph_of(model):
    g = gs.import_onnx(model)
    onnx_utils.fold_constant_inputs(g)
    return g


def inputs():
    return [np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)]


def test_fold_constant_inputs_folds_zero_point_chains_but_keeps_qdq():
    g = gs.import_onnx(conv_graph())
    assert onnx_utils.fold_constant_inputs(g) == 10  # 8 Constant + ConstantOfShape + Cast
    ops = onnx_utils.op_counts(g)
    assert ops["DequantizeLinear"] == 3 and ops["QuantizeLinear"] == 1 and "Constant" not in ops


def test_remove_qdq_casts_only_removes_identity_casts():
    g = graph_of(conv_graph())
    assert surgery.remove_qdq_casts(g) == 1
    g.cleanup()
    dq = next(n for n in g.nodes if n.name == "dequant")
    assert dq.inputs[0].inputs[0].op == "QuantizeLinear"
    g2 = graph_of(conv_graph(cast_to=TensorProto.INT8))  # a real type change must stay
    assert surgery.remove_qdq_casts(g2) == 0


def test_int8_zero_points_is_exact_and_shares_one_tensor():
    g = graph_of(conv_graph())
    surgery.remove_qdq_casts(g)
    g.cleanup()
    assert surgery.int8_zero_points(g) == 2
    q = next(n for n in g.nodes if n.op == "QuantizeLinear")
    dq = next(n for n in g.nodes if n.name == "dequant")
    assert q.inputs[2] is dq.inputs[2] and q.inputs[2].values.dtype == np.int8 and not q.inputs[2].values.any()


@pytest.mark.parametrize("zp,dtype", [(100, np.uint8), (3, np.int8), (0, np.uint8)])
def test_asymmetric_zero_points_are_refused_with_node_names(zp, dtype):
    g = graph_of(conv_graph(act_zp=dtype(zp), act_dtype=dtype, with_cast=False))
    with pytest.raises(PipelineError, match=r"symmetric quantization only.*quant \(QuantizeLinear, zero point \["):
        surgery.int8_zero_points(g)


def test_fold_bias_dequantize_computes_float32_bias():
    g = graph_of(conv_graph())
    assert surgery.fold_bias_dequantize(g) == 1
    conv = next(n for n in g.nodes if n.op == "Conv")
    bias = conv.inputs[2]
    assert isinstance(bias, gs.Constant) and bias.values.dtype == np.float32
    expected = np.array([100, -50, 7], np.float64) * np.array([0.01, 0.02, 0.03], np.float32).astype(np.float64) \
        * np.float32(0.05)
    np.testing.assert_allclose(bias.values, expected, rtol=1e-6)


def test_fold_bias_dequantize_folds_a_convtranspose_bias():
    """qnnpack exports a quantized ConvTranspose's bias as an int32 DequantizeLinear, as a Conv's (zoo UNet)."""
    model = conv_graph()
    next(n for n in model.graph.node if n.op_type == "Conv").op_type = "ConvTranspose"
    g = graph_of(model)
    assert surgery.fold_bias_dequantize(g) == 1
    bias = next(n for n in g.nodes if n.op == "ConvTranspose").inputs[2]
    assert isinstance(bias, gs.Constant) and bias.values.dtype == np.float32


def test_make_tensorrt_ready_passes_lint_and_is_equivalent():
    model = conv_graph()
    before = lint.lint(model)
    assert before["zero_points_int8_zero"] and before["dequantize_inputs_int8"] and before["quantize_feeds_dequantize"]
    out, report = surgery.make_tensorrt_ready(model)
    assert report["rewrites"] == {"fold_constant_inputs": 10, "remove_qdq_casts": 1, "fold_bias_dequantize": 1,
                                  "int8_zero_points": 2}
    assert not any(lint.lint(out).values())
    eq = ort_equivalence(model, out, inputs() * 3)
    assert eq.passed and eq.figures["max_abs_diff"] == 0.0
    onnx.checker.check_model(out, full_check=True)


def test_fp32_graph_is_refused_unless_allowed():
    with pytest.raises(PipelineError, match="nothing to quantize"):
        surgery.make_tensorrt_ready(fp32_graph())
    out, report = surgery.make_tensorrt_ready(fp32_graph(), allow_fp32=True)
    assert report["ops_after"] == {"Relu": 1}


@pytest.mark.parametrize("kwargs,rule", [
    ({"opset": 12, "weight_axis": 0}, "opset_supports_qdq"),
    ({"weight_axis": 1}, "scales_per_channel_on_weights_only"),
    ({"act_scale_count": 2, "with_cast": False}, "scales_per_channel_on_weights_only"),
])
def test_lint_rejects(kwargs, rule):
    model = conv_graph(act_zp=np.int8(0), act_dtype=np.int8, with_cast=kwargs.pop("with_cast", False),
                       cast_to=TensorProto.INT8, bias_int32=False, **kwargs)
    results = lint.lint(model)
    assert results[rule], f"{rule} should fail"
    assert [r for r, f in results.items() if f] == [rule]


def test_lint_rejects_integer_constant_into_conv():
    model = conv_graph(act_zp=np.int8(0), act_dtype=np.int8, with_cast=False, bias_int32=False)
    g = gs.import_onnx(model)
    conv = next(n for n in g.nodes if n.op == "Conv")
    conv.inputs.append(gs.Constant("int_bias", np.zeros(3, np.int32)))
    results = lint.lint(gs.export_onnx(g))
    assert [f.node for f in results["compute_inputs_float"]] == ["conv"]


def test_lint_accepts_a_clean_int8_graph():
    model = conv_graph(act_zp=np.int8(0), act_dtype=np.int8, with_cast=False, bias_int32=False)
    assert not any(lint.lint(model).values())
    ort_session(model)  # and onnxruntime can load it


def test_load_onnx_errors(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        onnx_utils.load_onnx(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(PipelineError, match="not a valid ONNX model"):
        onnx_utils.load_onnx(bad)
    good = tmp_path / "good.onnx"
    onnx.save(conv_graph(), str(good))
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(PipelineError, match="not a valid ONNX model"):
        onnx_utils.load_onnx(truncated)
