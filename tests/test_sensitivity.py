"""Sensitivity report and automatic fallback on a tiny eager-quantized CNN with one layer made sensitive on
purpose: the first conv's ReLU output has one outlier channel (bias 1000) that the next conv ignores (zero
weights), so FP32 is unaffected while that activation's per-tensor 8-bit range crushes every other channel."""

import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
from torch import nn
from torch.ao import quantization as tq

from conftest import ROOT, run_script
from eager2trt.eager.export import export_onnx
from eager2trt.eager.model import fuse, variance_preserving_init
from eager2trt.eager.quantize import quantize
from eager2trt.errors import PipelineError
from eager2trt.graph import fallback as fb
from eager2trt.graph import sensitivity as sens
from eager2trt.graph.lint import lint, passed
from eager2trt.graph.surgery import make_tensorrt_ready
from graph_checks import onnx_logits, ort_equivalence as equivalence

SHAPE = (3, 32, 32)  # quantize() checks the converted model on one 32x32 image
OUTLIER = 1000.0


class Tiny(nn.Module):
    """QuantStub -> Conv+ReLU -> Conv+ReLU -> Flatten -> Linear -> DeQuantStub (no pooling: averaging random
    features would leave every input the same top-1 class)."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(8 * SHAPE[1] * SHAPE[2], 10)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(self.quant(x)))))
        return self.dequant(self.fc(torch.flatten(x, 1)))

    def fuse_model(self):
        tq.fuse_modules(self, [["conv1", "relu1"], ["conv2", "relu2"]], inplace=True)


def tiny_model() -> Tiny:
    torch.manual_seed(0)
    m = variance_preserving_init(Tiny()).eval()
    with torch.no_grad():
        m.conv1.bias[0] = OUTLIER  # channel 0 is always ~1000 after the ReLU
        m.conv2.weight[:, 0] = 0.0  # ...and the next conv ignores it, so FP32 does not depend on it
    return m


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """(FP32 ONNX path, INT8 ONNX path) of the tiny model, min-max calibrated (the outlier sets the range)."""
    out = tmp_path_factory.mktemp("tiny")
    m = tiny_model()
    fused, _ = fuse(m, input_shape=SHAPE)
    gen = torch.Generator().manual_seed(1)
    int8 = quantize(fused, [torch.randn(16, *SHAPE, generator=gen) for _ in range(2)], calibration="minmax")
    example = torch.randn(1, *SHAPE)
    return export_onnx(m, out / "fp32.onnx", example=example), export_onnx(int8, out / "int8.onnx", example=example)


def sensitive_key(model: onnx.ModelProto) -> str:
    """The activation layer fed by the first Conv's ReLU, found by structure (its Q output names the layer)."""
    g = gs.import_onnx(sens.prepare(model))
    conv = next(n for n in g.nodes if n.op == "Conv")
    relu = conv.outputs[0].outputs[0]
    return next(c for c in relu.outputs[0].outputs if c.op == "QuantizeLinear").outputs[0].name


def inputs(n=256):
    return sens.random_inputs(n, SHAPE, batch_size=128)


@pytest.fixture(scope="module")
def studied(graphs):
    fp32, int8 = (onnx.load(str(p)) for p in graphs)
    report, s = sens.sensitivity(int8, inputs(), fp32=fp32, threads=1, progress=False)
    return int8, fp32, report, s


# ---------------------------------------------------------------- queries and rewrites

def test_layers_are_every_activation_quantizer_and_every_compute_weight(graphs):
    model = sens.prepare(onnx.load(str(graphs[1])))
    layers = sens.find_layers(gs.import_onnx(model))
    kinds = [u.kind for u in layers]
    qs = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert kinds.count("weight") == 3  # conv1, conv2, fc
    assert kinds.count("activation") == qs  # every Q here quantizes an activation
    assert [u.op for u in layers if u.kind == "weight"] == ["Conv", "Conv", "Gemm"]
    assert layers[0].op == "input -> Conv" and len({u.key for u in layers}) == len(layers)


def test_rewrites_count_their_changes_and_all_float_has_no_qdq(graphs):
    model = sens.prepare(onnx.load(str(graphs[1])))
    g = gs.import_onnx(model)
    layers = sens.find_layers(g)
    acts = {u.key for u in layers if u.kind == "activation"}
    assert sens.bypass_activation_qdq(g, acts) == len(acts)
    values = {dq.outputs[0].name: sens.dequantized(dq) for dq in sens.weight_dequantizers(g)}
    assert sens.float_weights(g, values) == 3
    g.cleanup()
    assert not any(n.op in ("QuantizeLinear", "DequantizeLinear") for n in g.nodes)
    assert sens.bypass_activation_qdq(g, acts) == 0 and sens.float_weights(g, values) == 0
    floated = sens.with_float_layers(model, layers, values)
    # dequantized weights compute what DequantizeLinear computes: weights alone in float change nothing
    weights_only = sens.with_float_layers(model, [u for u in layers if u.kind == "weight"], values)
    assert equivalence(model, weights_only, inputs(64), atol=1e-5).passed
    assert not equivalence(model, floated, inputs(64), atol=1e-3).passed


def test_fp32_weights_are_matched_by_shape_and_value_not_by_name(graphs):
    fp32, int8 = (onnx.load(str(p)) for p in graphs)
    g = gs.import_onnx(sens.prepare(int8))
    found, missing = sens.match_fp32_weights(g, fp32)
    weights = {k: v for k, v in found.items() if not k.endswith(":bias")}
    assert missing == [] and len(weights) == 3
    for dq in sens.weight_dequantizers(g):
        step = np.abs(dq.inputs[1].values).max()
        assert np.abs(found[dq.outputs[0].name] - sens.dequantized(dq)).max() <= 0.51 * step
    # each matched weight brings its node's float bias: the FP32 ONNX's own values
    fp_biases = [np.asarray(n.inputs[2].values) for n in gs.import_onnx(fp32).nodes
                 if n.op in ("Conv", "Gemm") and len(n.inputs) > 2 and isinstance(n.inputs[2], gs.Constant)]
    got = [found[sens.bias_key(k)] for k in weights if sens.bias_key(k) in found]
    assert len(got) == len(fp_biases) > 0
    assert all(any(b.shape == f.shape and np.array_equal(b, f) for f in fp_biases) for b in got)
    perturbed = onnx.load(str(graphs[0]))
    init = max(perturbed.graph.initializer, key=lambda t: len(t.dims) == 4 and t.dims[1] == 8)  # conv2's weight
    w = onnx.numpy_helper.to_array(init) + 1.0  # more than half a step away everywhere
    init.CopyFrom(onnx.numpy_helper.from_array(w.astype(np.float32), init.name))
    found, missing = sens.match_fp32_weights(g, perturbed)
    assert len(missing) == 1 and len([k for k in found if not k.endswith(":bias")]) == 2


def large_weight_graphs(tmp_path):
    """(FP32, INT8) ONNX models of the tiny CNN with large conv2 weights (as BatchNorm folding makes them in
    depthwise convolutions), so that the int32 bias step (input scale x weight scale) is visible."""
    m = tiny_model()
    with torch.no_grad():
        m.conv2.weight.mul_(40.0)
        m.conv2.bias.add_(torch.linspace(0.1, 0.9, m.conv2.bias.numel()))
    fused, _ = fuse(m, input_shape=SHAPE)
    gen = torch.Generator().manual_seed(1)
    int8 = quantize(fused, [torch.randn(16, *SHAPE, generator=gen) for _ in range(2)], calibration="minmax")
    example = torch.randn(1, *SHAPE)
    return tuple(onnx.load(str(export_onnx(model, tmp_path / f"{name}.onnx", example=example)))
                 for name, model in (("fp32", m), ("int8", int8)))


def test_every_layer_in_float_computes_the_fp32_graph(tmp_path):
    # weights and biases back from the FP32 ONNX: the INT8 export's biases are rounded to the int32 step, so a
    # "float" layer that kept them would not compute what FP32 computes
    fp32, int8 = large_weight_graphs(tmp_path)
    prepared = sens.prepare(int8)
    g = gs.import_onnx(prepared)
    found, _ = sens.match_fp32_weights(g, fp32)
    floated = sens.with_float_layers(prepared, sens.find_layers(g), found)
    batches = inputs(64)
    ref, got = onnx_logits(fp32, batches), onnx_logits(floated, batches)
    assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()  # measured 0; the rounded biases: 1e-2


def test_a_graph_without_qdq_is_refused(graphs):
    with pytest.raises(PipelineError, match="no QuantizeLinear/DequantizeLinear nodes"):
        sens.study(onnx.load(str(graphs[0])), inputs(8))
    with pytest.raises(PipelineError, match="fp32 holds QuantizeLinear"):
        sens.study(onnx.load(str(graphs[1])), inputs(8), fp32=onnx.load(str(graphs[1])))


# ---------------------------------------------------------------- the ranking

def test_the_sensitive_layer_ranks_first_both_ways(studied):
    int8, _, report, s = studied
    key = sensitive_key(int8)
    top = report.layers[0]
    assert top.key == key and top.kind == "activation" and top.op == "Relu -> Conv"
    assert report.int8.score < 0.6 < top.float_alone.score  # the outlier destroys the INT8 graph on its own
    assert top.gain == max(u.gain for u in report.layers) and top.gain > 2 * max(u.gain for u in report.layers[1:])
    assert top.loss == max(u.loss for u in report.layers)
    assert report.evaluations == 2 * len(s.layers) and report.images == 256
    assert report.weights_source.startswith("the FP32 ONNX's weights")
    assert report.all_float.error < 1e-3 * report.int8.error  # FP32 weights: every layer in float is FP32


def test_one_image_of_gain_is_a_tie_broken_by_the_logit_error_removed():
    int8 = sens.Measurement(score=0.9, error=1.0, agreement=0.9)

    def layer(name, gain, error):
        return sens.LayerSensitivity(0, name, "activation", "Conv", name, gain, sens.Measurement(0.9, error, 0.9))

    ranked = sens.rank([layer("noise", 0.1, 0.9), layer("error", 0.0, 0.5), layer("real", 0.2, 0.95)], int8, 1000)
    assert [u.name for u in ranked] == ["real", "error", "noise"] and [u.rank for u in ranked] == [1, 2, 3]


def test_worst_layers_names_the_sensitive_one_cheaply(graphs, studied):
    int8, fp32, report, _ = studied
    top = sens.worst_layers(int8, inputs(), fp32=fp32, k=2, threads=1)
    assert top[0] == report.layers[0].label and len(top) == 2


def test_without_fp32_the_reference_is_the_graph_without_qdq(graphs):
    int8 = onnx.load(str(graphs[1]))
    report, _ = sens.sensitivity(int8, inputs(128), threads=1, progress=False)
    assert report.layers[0].key == sensitive_key(int8)
    assert report.reference_name == "the INT8 graph with every Q/DQ removed"
    assert "not measured" in report.weights_source
    assert all(u.gain == 0 for u in report.layers if u.kind == "weight")  # same numbers without FP32 weights


# ---------------------------------------------------------------- the fallback

def test_fallback_keeps_exactly_the_sensitive_layer_and_reaches_the_budget(studied):
    int8, _, report, s = studied
    top = report.layers[0]
    budget = 100 * (s.reference.score - top.float_alone.score) + 0.5  # reachable with that layer alone
    assert s.int8.score < s.reference.score - budget / 100  # ...and not without it
    result = fb.fallback(s, report, budget, progress=False)
    assert result.kept == [top.label] and result.reached and result.check().passed
    assert result.measurement.score >= s.reference.score - budget / 100
    assert passed(lint(result.model))
    onnx.checker.check_model(result.model, full_check=True)
    assert "FP32 ONNX within" in result.held_to and "PyTorch" in result.held_to
    # the sensitive pair is gone: the second Conv reads the ReLU straight
    g = gs.import_onnx(result.model)
    conv2 = [n for n in g.nodes if n.op == "Conv"][1]
    assert conv2.inputs[0].inputs[0].op == "Relu"
    assert result.extra_layers["float_compute_layers"] == 1 and result.extra_layers["reformat_layers"] == 1


def test_fallback_that_cannot_reach_the_budget_fails_its_check(studied):
    _, _, report, s = studied
    result = fb.fallback(s, report, 0.0, max_layers=0, progress=False)
    check = result.check()
    assert not result.reached and not check.passed and result.kept == []
    assert "quantization-aware training" in check.sentence()
    with pytest.raises(PipelineError, match="budget must be a finite number, 0 or more"):
        fb.fallback(s, report, -1.0)


def test_fallback_never_keeps_every_layer_in_float(studied, monkeypatch):
    # a budget nothing reaches walks the whole ranking; keeping every layer would leave no Q/DQ at all (the FP32
    # model, which the exact surgery refuses): the search stops one short and reports the budget missed
    _, _, report, s = studied
    never = sens.Measurement(score=-1.0, error=1.0, agreement=0.0)
    monkeypatch.setattr(s.evaluator, "measure", lambda model: never)
    result = fb.fallback(s, report, 0.0, prune=False, progress=False)
    assert not result.reached and len(result.kept) == len(s.layers) - 1
    assert any(n.op_type == "QuantizeLinear" for n in result.model.graph.node)


def test_extra_layers_count_the_reformats_around_a_float_conv(graphs):
    model = make_tensorrt_ready(onnx.load(str(graphs[1])))[0]
    g = gs.import_onnx(model)
    layers = sens.find_layers(g)
    conv2_weight = [u for u in layers if u.kind == "weight"][1]
    values = {dq.outputs[0].name: sens.dequantized(dq) for dq in sens.weight_dequantizers(g)}
    floated = sens.with_float_layers(model, [conv2_weight], values)
    extra = fb.extra_layers(model, floated)
    # its input DQ can no longer fuse into it, nor the Q after its ReLU into it: one reformat at each edge
    assert extra["reformat_layers"] == 2 and extra["float_compute_layers"] == 1
    assert fb.extra_layers(model, model)["reformat_layers"] == 0


# ---------------------------------------------------------------- the CLI

def test_cli_writes_the_report_and_the_fallback_graph(graphs, tmp_path):
    fp32, int8 = graphs
    out = tmp_path / "out"
    proc = run_script("-m", "eager2trt.cli.sensitivity", "--input", int8, "--fp32", fp32, "--images", 128,
                      "--threads", 1, "--output-dir", out, "--fallback", "--accuracy-budget", 10, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "sensitivity.json").read_text())
    layers = record["sensitivity"]["layers"]
    assert layers[0]["key"] == sensitive_key(onnx.load(str(int8))) and layers[0]["rank"] == 1
    # the outlier costs ~80 points, every other layer ~2: a 10-point budget needs that layer and only it
    assert record["fallback"]["reached"] and record["fallback"]["kept"] == [f"activation {layers[0]['name']}"]
    assert "| 1 | `" in (out / "sensitivity.md").read_text()
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "resnet_quantized_cifar10_fallback.onnx").exists()
    fallback = onnx.load(str(out / "resnet_quantized_cifar10_fallback.onnx"))
    assert passed(lint(fallback))
    assert "random standard-normal inputs" in proc.stdout and "held to: the FP32 ONNX within 10 points" in proc.stdout


@pytest.mark.parametrize("flags,fragment", [
    (["--input", "missing.onnx"], "--input missing.onnx does not exist"),
    (["--fp32", "missing.onnx"], "--fp32 missing.onnx does not exist"),
    (["--accuracy-budget", "-1"], "--accuracy-budget must be a finite number, 0 or more, got -1.0"),
    (["--images", "0"], "--images must be positive, got 0"),
])
def test_cli_rejects_bad_input_in_one_sentence(graphs, tmp_path, capsys, flags, fragment):
    """In-process through run_cli, the entry point's own error path (the subprocess test below covers the exit)."""
    from eager2trt.cli import sensitivity as cli

    args = cli.get_args_parser().parse_args(["--input", str(graphs[1]), "--output-dir", str(tmp_path / "out"),
                                             *flags])
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(lambda: cli.main(args))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_fp32_graph_as_input(graphs, tmp_path):
    proc = run_script("-m", "eager2trt.cli.sensitivity", "--input", graphs[0], "--output-dir", tmp_path, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "has no QuantizeLinear/DequantizeLinear nodes (an FP32 model?)" in proc.stderr
    assert not (tmp_path / "sensitivity.json").exists()


def test_fast_graph_carries_the_fp32_biases(tmp_path):
    # TensorRT reads a Conv's bias as a float constant: the fast graph carries the unrounded FP32 values instead
    # of the export's int32-rounded ones (what that is worth is measured by the model matrix, not here: on this
    # tiny model the outlier activation's quantization error dwarfs it)
    from eager2trt.graph.sensitivity import restore_float_biases
    from eager2trt.pipeline import make_graph

    fp32, int8 = large_weight_graphs(tmp_path)
    rounded, floated = make_graph(int8, "fast"), make_graph(int8, "fast", fp32=fp32)
    assert floated.report["rewrites"]["float_biases"] == 3 and "float_biases" not in rounded.report["rewrites"]
    fp_biases = sorted((tuple(n.inputs[2].shape), n.inputs[2].values.tobytes()) for n in gs.import_onnx(fp32).nodes
                       if n.op in ("Conv", "Gemm"))
    got = sorted((tuple(n.inputs[2].shape), n.inputs[2].values.tobytes()) for n in gs.import_onnx(floated.model).nodes
                 if n.op in ("Conv", "Gemm"))
    assert got == fp_biases
    was = sorted((tuple(n.inputs[2].shape), n.inputs[2].values.tobytes()) for n in gs.import_onnx(rounded.model).nodes
                 if n.op in ("Conv", "Gemm"))
    assert was != fp_biases  # the export's biases were rounded: the rewrite changed them
    assert passed(lint(floated.model, performance="error"))
    assert restore_float_biases(floated.model, fp32)[1] == 3  # idempotent: the same values again


def test_study_with_fp32_biases_analyses_the_graph_tensorrt_computes(tmp_path):
    # the fallback searches from the graph with the FP32 biases (what TensorRT computes from a float bias), so a
    # graph that needs no layer in float is still no longer PyTorch INT8's: it is held to FP32 and says why
    fp32, int8 = large_weight_graphs(tmp_path)
    batches = inputs(32)
    plain, restored = sens.study(int8, batches, fp32=fp32), sens.study(int8, batches, fp32=fp32, float_from=fp32)
    assert plain.float_biases == 0 and restored.float_biases == 3
    biases = sorted(n.inputs[2].values.tobytes() for n in gs.import_onnx(fp32).nodes if n.op in ("Conv", "Gemm"))
    assert sorted(n.inputs[2].values.tobytes() for n in gs.import_onnx(restored.model).nodes
                  if n.op in ("Conv", "Gemm")) == biases
    assert equivalence(plain.model, sens.prepare(int8), batches).passed  # without the flag: the graph as given
    report = sens.analyze(restored, alone_quantized=False, progress=False)
    assert report.extra == {"float_biases": 3}
    result = fb.fallback(restored, report, budget=100.0, progress=False)  # any graph is within 100 points
    assert result.kept == [] and "carries 3 unrounded float biases" in result.held_to
    assert "PyTorch INT8 as before" not in result.held_to
    assert "PyTorch INT8 as before" in fb.fallback(plain, sens.analyze(plain, alone_quantized=False, progress=False),
                                                   budget=100.0, progress=False).held_to
