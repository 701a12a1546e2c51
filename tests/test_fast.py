"""Fast mode (eager2trt/placement.py) and the lint's performance rules: each rewrite and rule on hand-built
graphs, failing cases included; then fast mode on four eager-quantized torchvision CNNs (random weights)."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
from torchvision.models import quantization as qmodels

from conftest import ROOT, run_script, skip_if_installed
from eager2trt.graph import lint
from eager2trt.graph import onnx_utils
from eager2trt.graph import placement
from eager2trt.graph import surgery
from eager2trt.errors import PipelineError
from eager2trt.eager.export import export_onnx
from eager2trt.eager.model import fuse
from eager2trt.eager.quantize import quantize
from eager2trt.runtime.inputs import random_batches
from graph_checks import ort_equivalence, ort_error_ratio
from qdq_graphs import QdqBuilder, hardsigmoid_graph, residual_graph

FEATURES = (1, 4, 4, 4)


def graph_of(model):
    return gs.import_onnx(model)


def add_node(graph):
    return next(n for n in graph.nodes if n.op == "Add")


def source(t):
    return t.inputs[0] if t.inputs else None


def batches(n=3):
    return random_batches(FEATURES, n)


# ---------------------------------------------------------------- queries

@pytest.mark.parametrize("downsample", [False, True])
def test_conv_branch_is_the_longer_path_back_to_the_common_ancestor(downsample):
    g = graph_of(residual_graph(downsample=downsample))
    add = add_node(g)
    assert placement.conv_branch_input(add) == 0  # residual_graph adds (conv branch, skip)
    conv = source(placement.qdq_pair(add.inputs[0])[0].inputs[0])
    assert conv.op == "Conv" and source(conv.inputs[0]).op == "DequantizeLinear"
    assert source(source(conv.inputs[0]).inputs[0]).inputs[0].name != "input"  # conv2, not the downsample conv


def test_conv_branch_refuses_to_guess_between_equal_paths():
    b = QdqBuilder()
    x = b.qdq("input")
    add = b.node("Add", [b.qdq(b.conv(x, 4, 4, 1)), b.qdq(b.conv(x, 4, 4, 2))])
    g = graph_of(b.model(add, classes=None))
    assert placement.conv_branch_input(add_node(g)) is None
    assert placement.place_residual_qdq(g) == 0


def test_a_lateral_add_fuses_with_its_one_conv_input_though_the_other_path_is_longer():
    """FPN: Add(lateral Conv, Resize of a coarser Conv); the up-sampled path is longer, but only the lateral input
    comes from a Conv, so the Add reads that Conv directly and the Resize keeps its Q/DQ as the skip."""
    b = QdqBuilder()
    x = b.qdq("input")
    coarse = b.qdq(b.conv(b.qdq(b.node("Relu", [b.conv(x, 4, 4, 1)])), 4, 4, 2))
    scales = b.add_init("scales", np.array([1, 1, 1, 1], np.float32))
    up = b.qdq(b.node("Resize", [coarse, "", scales], mode="nearest"))
    add = b.node("Add", [b.qdq(b.conv(x, 4, 4, 3)), up])
    g = graph_of(b.model(add, classes=None))
    assert placement.conv_branch_input(add_node(g)) == 1  # the longer path is the up-sampled one
    assert placement.place_residual_qdq(g) == 1
    lateral, skip = (source(t) for t in add_node(g).inputs)
    assert lateral.op == "Conv" and skip.op == "DequantizeLinear"


def test_feeds_int8_op_looks_through_flatten_and_past_a_pair_of_the_same_scale():
    g = graph_of(residual_graph())
    dangling = placement.dangling_dequantizes(g)
    consumers = sorted(c.op for dq in dangling for c in dq.outputs[0].outputs)
    # before placement the conv branch's pair dangles (the skip's DQ also feeds conv1); the pair before Flatten
    # reaches the Gemm past the same-scale pair after it (one int8 grid: TensorRT's DQ and Q cancel); the last
    # pair feeds nothing but the graph output
    assert consumers == ["Add"] and len(dangling) == 2


def test_feeds_int8_op_stops_at_a_pair_of_another_scale():
    g = graph_of(residual_graph(flat_scale=0.03))
    consumers = sorted(c.op for dq in placement.dangling_dequantizes(g) for c in dq.outputs[0].outputs)
    assert consumers == ["Add", "Flatten"]  # the pair before Flatten would be requantized: it dangles


# ---------------------------------------------------------------- rewrites

@pytest.mark.parametrize("downsample", [False, True])
def test_place_residual_qdq_feeds_the_add_from_the_conv_and_keeps_the_skip(downsample):
    g = graph_of(residual_graph(downsample=downsample))
    assert placement.place_residual_qdq(g) == 1
    g.cleanup()
    add = add_node(g)
    assert source(add.inputs[0]).op == "Conv" and placement.qdq_pair(add.inputs[1]) is not None
    relu = add.outputs[0].outputs[0]
    assert relu.op == "Relu" and relu.outputs[0].outputs[0].op == "QuantizeLinear"  # the Q feeding on stays
    assert placement.place_residual_qdq(g) == 0  # nothing left to move


def test_place_residual_qdq_rewires_only_the_add_when_the_dq_has_other_consumers():
    g = graph_of(residual_graph(head=False))
    dq_out = add_node(g).inputs[0]
    extra = gs.Variable("extra", dtype=np.float32, shape=list(FEATURES))
    g.nodes.append(gs.Node("Relu", inputs=[dq_out], outputs=[extra]))
    g.outputs.append(extra)
    assert placement.place_residual_qdq(g) == 1
    g.cleanup()
    assert source(extra).inputs[0] is dq_out and source(dq_out).op == "DequantizeLinear"


def test_drop_dangling_qdq_keeps_only_pairs_that_feed_int8_ops():
    g = graph_of(residual_graph(flat_scale=0.03))
    placement.place_residual_qdq(g)
    g.cleanup()
    assert placement.drop_dangling_qdq(g) == 2  # before Flatten (another scale after it), after the Gemm
    g.cleanup()
    flatten = next(n for n in g.nodes if n.op == "Flatten")
    assert source(flatten.inputs[0]).op == "GlobalAveragePool"
    gemm = next(n for n in g.nodes if n.op == "Gemm")
    assert source(gemm.inputs[0]).op == "DequantizeLinear"  # Flatten -> Q -> DQ -> Gemm kept
    assert g.outputs[0].name == "output" and source(g.outputs[0]) is gemm
    pool = next(n for n in g.nodes if n.op == "GlobalAveragePool")
    assert source(pool.inputs[0]).op == "DequantizeLinear"  # the pooling input keeps its pair
    assert placement.drop_dangling_qdq(g) == 0


def test_fold_qdq_after_data_movement_is_exact_and_keeps_the_pair_before():
    model = residual_graph()
    g = graph_of(model)
    assert placement.fold_qdq_after_data_movement(g) == 1  # the same-scale pair after Flatten
    g.cleanup()
    gemm = next(n for n in g.nodes if n.op == "Gemm")
    assert source(gemm.inputs[0]).op == "Flatten" and source(source(gemm.inputs[0]).inputs[0]).op == "DequantizeLinear"
    assert placement.fold_qdq_after_data_movement(g) == 0
    assert ort_equivalence(model, gs.export_onnx(g), batches()).passed  # moving int8 values keeps them
    other = graph_of(residual_graph(flat_scale=0.03))
    assert placement.fold_qdq_after_data_movement(other) == 0  # another scale: a real requantization


def test_make_fast_counts_and_stays_close_to_the_exact_graph():
    model = residual_graph(zp=np.uint8(128))
    exact, _ = surgery.make_tensorrt_ready(model)
    fast, report = placement.make_fast(model)
    assert report["rewrites"] == {"fold_constant_inputs": 0, "remove_qdq_casts": 0, "fold_bias_dequantize": 0,
                                  "place_residual_qdq": 1, "fold_qdq_after_data_movement": 1,
                                  "share_concat_scales": 0, "commute_qdq_through_maxpool": 0,
                                  "drop_dangling_qdq": 1, "int8_zero_points": 8}
    onnx.checker.check_model(fast, full_check=True)
    eq = ort_equivalence(exact, fast, batches(), atol=0.5)  # one rounding step less per place, not bit-exact
    assert eq.passed and eq.figures["max_abs_diff"] > 0 and eq.figures["argmax_agreement"] == 1.0


def test_fast_mode_drops_fixed_qparam_pairs_before_the_zero_point_mapping():
    model = hardsigmoid_graph()
    with pytest.raises(PipelineError, match="symmetric quantization only"):
        surgery.make_tensorrt_ready(model)  # exact mode rightly refuses uint8 zero point 0
    fast, report = placement.make_fast(model)
    assert report["rewrites"]["drop_dangling_qdq"] == 2 and report["ops_after"]["HardSigmoid"] == 1
    g = graph_of(fast)
    assert source(next(n for n in g.nodes if n.op == "HardSigmoid").inputs[0]).op == "Conv"
    assert not any(lint.lint(fast, performance="error").values())
    assert ort_equivalence(model, fast, batches(), atol=0.5).passed


def test_fp16_high_precision_is_typed_with_float32_io():
    fast, report = placement.make_fast(residual_graph(downsample=True))
    fp16 = placement.with_high_precision(fast, report, "fp16")
    onnx.checker.check_model(fp16, full_check=True)
    assert fp16.opset_import[0].version == placement.QDQ_OPSET_FP16 and report["kept_fp32"] == []
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert fp16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    g = graph_of(fp16)
    assert all(n.inputs[1].values.dtype == np.float16 for n in onnx_utils.qdq_nodes(g))
    assert onnx_utils.op_counts(g)["Cast"] == 2 and report["rewrites"]["high_precision_fp16"] > 0
    eq = ort_equivalence(fast, fp16, batches(), atol=0.05)
    assert eq.passed and eq.figures["argmax_agreement"] == 1.0
    assert lint.performance_summary(fp16)["high_precision"] == "fp16"


def _set_initializer(model, name, values):
    init = next(t for t in model.graph.initializer if t.name == name)
    init.CopyFrom(onnx.numpy_helper.from_array(np.asarray(values, dtype=np.float32), name))
    return model


def test_fp16_keeps_overflowing_ranges_and_constants_fp32_and_says_so():
    model = residual_graph(downsample=True)
    g = graph_of(model)
    input_scale = next(n for n in g.nodes if n.op == "QuantizeLinear" and n.inputs[0].name == "input").inputs[1].name
    bias = next(n for n in g.nodes if n.op == "Conv").inputs[2].name
    _set_initializer(model, input_scale, 1000.0)  # calibrated range 127,000 > 65,504
    _set_initializer(model, bias, np.full(4, 1e5))
    fast, report = placement.make_fast(model)
    fp16 = placement.with_high_precision(fast, report, "fp16")
    onnx.checker.check_model(fp16, full_check=True)
    kept = " ".join(report["kept_fp32"])
    assert "calibrated range 1.27e+05 overflows FP16" in kept and f"constant {bias} exceeds FP16" in kept
    assert lint.performance_summary(fp16)["high_precision"].startswith("fp16 (")
    out = ort_equivalence(fast, fp16, batches(), atol=1e9)
    assert np.isfinite(out.figures["max_abs_diff"])


def test_unknown_high_precision_is_refused():
    fast, report = placement.make_fast(residual_graph())
    with pytest.raises(PipelineError, match="choose one of fp32, fp16"):
        placement.with_high_precision(fast, report, "bf16")


# ---------------------------------------------------------------- lint performance rules

def test_exact_graph_warns_and_fast_graph_passes_the_performance_rules(capsys):
    exact, _ = surgery.make_tensorrt_ready(residual_graph())
    found = lint.lint(exact, performance="warning")
    assert len(found["residual_add_fusable"]) == 1 and len(found["no_dangling_qdq"]) == 2
    assert all(f.level == "warning" for f in found["residual_add_fusable"] + found["no_dangling_qdq"])
    assert lint.print_lint(found)  # warnings do not fail
    assert "WARN residual_add_fusable" in capsys.readouterr().out
    assert lint.performance_summary(exact) == {"high_precision": "fp32", "residual_adds": 1,
                                               "fusable_residual_adds": 0, "unfused_elementwise": 1,
                                               "requantize_layers": 0, "unfused_activations": 0,
                                               "unfused_maxpools": 0, "predicted_unfused_layers": 1,
                                               "quantize_nodes": 7, "dequantize_nodes": 10}
    fast, _ = placement.make_fast(residual_graph())
    assert not any(lint.lint(fast, performance="error").values())
    assert lint.performance_summary(fast) == {"high_precision": "fp32", "residual_adds": 1,
                                              "fusable_residual_adds": 1, "unfused_elementwise": 0,
                                              "requantize_layers": 0, "unfused_activations": 0,
                                              "unfused_maxpools": 0, "predicted_unfused_layers": 0,
                                              "quantize_nodes": 4, "dequantize_nodes": 7}
    assert set(lint.lint(fast)) == {r.__name__ for r in lint.RULES}  # without a level: correctness rules only
    assert set(lint.lint(fast, performance="error")) == {r.__name__ for r in
                                                         lint.RULES + lint.PERFORMANCE_RULES + lint.PREDICTIONS}


def test_residual_add_fusable_fails_when_the_branch_is_not_a_conv(capsys):
    fast, report = placement.make_fast(residual_graph(skip_op="Relu"))
    assert report["rewrites"]["place_residual_qdq"] == 0
    found = lint.lint(fast, performance="error")
    assert [f.rule for f in found["residual_add_fusable"]] == ["residual-add-fusable"]
    assert not lint.print_lint(found) and "FAIL residual_add_fusable" in capsys.readouterr().out


def test_no_dangling_qdq_fails_on_a_pair_that_feeds_no_int8_op():
    exact, _ = surgery.make_tensorrt_ready(hardsigmoid_graph(), rewrites=surgery.REWRITES[:-1])
    found = lint.lint(exact, performance="error")["no_dangling_qdq"]
    assert sorted(f.message for f in found) == ["feeds HardSigmoid, no INT8 operation", "feeds Mul, no INT8 operation"]
    assert all(f.level == "error" for f in found)


def _float_version(model):
    """A copy with every activation Q/DQ pair bypassed: the float network the graph quantizes."""
    g = gs.import_onnx(onnx.ModelProto.FromString(model.SerializeToString()))
    for dq in [n for n in g.nodes if n.op == "DequantizeLinear" and placement.qdq_pair(n.outputs[0])]:
        q, _ = placement.qdq_pair(dq.outputs[0])
        placement._replace_uses(g, dq.outputs[0], q.inputs[0])
        dq.outputs.clear()
    return gs.export_onnx(g.cleanup())


def test_error_ratio_passes_fast_mode_and_fails_a_graph_further_from_fp32():
    exact, _ = surgery.make_tensorrt_ready(residual_graph(head=False))
    fast, _ = placement.make_fast(exact)
    reference = _float_version(exact)
    good = ort_error_ratio(reference, exact, fast, batches())
    assert good.passed and good.figures["exact_error"] > 0 and good.figures["bound"] == 1.25
    bad = ort_error_ratio(reference, exact, _perturbed(fast), batches())
    assert not bad.passed and bad.figures["ratio"] > 1.25


def _perturbed(model):
    """A copy with every activation scale divided by 8: ranges clipped far below the calibrated ones."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    g = gs.import_onnx(out)
    for n in g.nodes:
        if n.op in ("QuantizeLinear", "DequantizeLinear") and isinstance(n.inputs[0], gs.Variable):
            n.inputs[1] = gs.Constant(f"{n.name}_scale_div8", np.asarray(n.inputs[1].values / 8, np.float32))
    return gs.export_onnx(g.cleanup())


# ---------------------------------------------------------------- the CLI

def test_onnx_gs_fast_cli_lints_and_says_when_only_the_lint_ran(tmp_path):
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(residual_graph(zp=np.uint8(128)), str(src))
    proc = run_script(ROOT / "onnx_gs.py", "--input", src, "--output", out, "--mode", "fast",
                      "--metrics", tmp_path / "m.json")
    assert proc.returncode == 0, proc.stderr
    for line in ("place_residual_qdq: 1", "fold_qdq_after_data_movement: 1", "drop_dangling_qdq: 1",
                 "PASS lint.residual_add_fusable", "PASS lint.no_dangling_qdq",
                 "direct Conv input + DQ skip): 1/1", "left unfused: 0", "only the lint ran"):
        assert line in proc.stdout, line
    assert "onnx_gs_fast" in (tmp_path / "m.json").read_text()


def test_onnx_gs_fast_cli_fails_in_one_sentence(tmp_path):
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(residual_graph(skip_op="Relu"), str(src))
    proc = run_script(ROOT / "onnx_gs.py", "--input", src, "--output", out, "--mode", "fast")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and not out.exists()
    assert "check lint.residual_add_fusable failed" in proc.stderr and "use the exact graph" in proc.stderr
    proc = run_script(ROOT / "onnx_gs.py", "--input", src, "--output", out, "--high-precision", "fp16")
    assert proc.returncode == 2 and "needs --mode fast" in proc.stderr


# ---------------------------------------------------------------- generality

ARCHS = {"resnet18": 8, "resnet50": 16, "mobilenet_v2": 10, "mobilenet_v3_large": 10}


def settle_batchnorm(model, gen):
    """BatchNorm statistics of random inputs, in eval mode. With torchvision's MobileNet init the logits are
    ~1e-10 and quantize to 0 in every graph, which would make the error bound vacuous."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, 3, 32, 32, generator=gen))
    return model.eval()


@pytest.fixture(scope="module", params=list(ARCHS))
def exported(request, tmp_path_factory):
    """Random-weight torchvision quantizable CNN: FP32 ONNX and eager-quantized INT8 ONNX (project qconfig)."""
    torch.manual_seed(0)
    arch, out = request.param, tmp_path_factory.mktemp(request.param)
    gen = torch.Generator().manual_seed(0)
    model = getattr(qmodels, arch)(weights=None, quantize=False, num_classes=10)
    model = settle_batchnorm(model, gen) if arch.startswith("mobilenet") else model.eval()
    fused, _ = fuse(model, (3, 32, 32))
    calib = [torch.randn(8, 3, 32, 32, generator=gen) for _ in range(2)]
    int8 = quantize(fused, calib)
    return (arch, out, export_onnx(fused, out / "resnet_cifar10.onnx", calib[0]),
            export_onnx(int8, out / "resnet_quantized_cifar10.onnx", calib[0]))


def test_fast_mode_generality(exported):
    arch, _, fp32_path, int8_path = exported
    original = onnx_utils.load_onnx(int8_path)
    fast, report = placement.make_fast(original)
    assert report["rewrites"]["place_residual_qdq"] == ARCHS[arch]
    found = lint.lint(fast, performance="error")
    assert not any(found.values()), {k: v[:2] for k, v in found.items() if v}
    summary = lint.performance_summary(fast)
    assert summary["fusable_residual_adds"] == summary["residual_adds"] == ARCHS[arch]
    inputs = random_batches((4, 3, 32, 32), 2)
    res = ort_error_ratio(onnx_utils.load_onnx(fp32_path), original, fast, inputs)
    assert res.passed and res.figures["exact_error"] > 1e-3, res  # measured ratios 0.86-0.96
    fp16 = placement.with_high_precision(fast, dict(report, rewrites=dict(report["rewrites"])), "fp16")
    assert not any(lint.lint(fp16, performance="error").values())
    assert ort_error_ratio(onnx_utils.load_onnx(fp32_path), original, fp16, inputs).passed


def test_fast_cli_random_input_bound_uses_the_fp32_onnx_beside_the_input(exported):
    arch, out, _, int8_path = exported
    if arch != "resnet18":
        pytest.skip("one CLI run is enough")
    proc = run_script(ROOT / "onnx_gs.py", "--input", int8_path, "--output", out / "fast.onnx", "--mode", "fast",
                      "--metrics", out / "m.json")
    assert proc.returncode == 0, proc.stderr
    assert "PASS fast_error_ratio" in proc.stdout and "vs FP32 on 32 inputs" in proc.stdout and "(bound <= 1.25)" in proc.stdout


def test_anchors_bench_says_in_one_sentence_when_modelopt_is_missing(tmp_path):
    skip_if_installed("modelopt")
    proc = run_script(ROOT / "bench" / "anchors.py", "--output", tmp_path / "a", "--data-dir", tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "ModelOpt is not installed" in proc.stderr and "--modelopt-python" in proc.stderr
    assert not list(tmp_path.glob("a.*"))
