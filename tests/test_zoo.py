"""Every single-input / single-output model of tests/zoo.py (layers people deploy to TensorRT beyond torchvision's
classifiers) through quantize_to_tensorrt: random weights, 16 px (1-D models: 64 and 32 samples), seeded random
calibration, no labels. Each is converted once (module fixture); the tests read the result: graphs written, lint
clean, the exact graph bit-exact to the export, the float islands (eager/layers.py) where the table puts them.
Then the sentences: what the pipeline says for layers it cannot take, each naming the module path."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eager2trt.contract import EQUIVALENCE_ATOL
from eager2trt.eager.engines import computes_conv_transpose
from eager2trt.eager.layers import LAYERS, markdown_table
from eager2trt.errors import PipelineError
from eager2trt.pipeline import QuantizeConfig, quantize_to_tensorrt
from tests import zoo

# module paths kept in float, per model (the layer table's islands); every other model has none
ISLANDS = {"se_sigmoid_mul": ["gate"], "gelu": ["b1.2", "b2.2"], "elu": ["b1.2", "b2.2"], "silu": ["b1.2", "b2.2"],
           "mish": ["b1.2", "b2.2"], "batchnorm_after_add": ["bn"],
           "groupnorm_tanh": ["norm", "act"]}
# residual Adds fusable in the fast graph (Conv + Add in one TensorRT kernel), of all residual Adds
FUSABLE_ADDS = {"fpn_nearest_add": "1/1", "batchnorm_after_add": "1/1"}


@pytest.fixture(scope="module", params=list(zoo.ZOO))
def converted(request, tmp_path_factory):
    name = request.param
    try:
        return name, quantize_to_tensorrt(zoo.build(name), zoo.calibration(name), tmp_path_factory.mktemp(name))
    except PipelineError as exc:  # a sentence fails the test below; anything else is a raw traceback: an error
        return name, exc


def test_graphs_written_lint_clean_and_exact_bit_exact(converted):
    name, result = converted
    assert not isinstance(result, PipelineError), f"{name}: {result}"
    exact, fast = result.graphs["exact"], result.graphs["fast"]
    assert exact.path.is_file() and fast.path.is_file()
    assert all(c.passed for c in exact.checks + fast.checks), [c.line() for c in exact.checks + fast.checks]
    lint = [c for c in exact.checks if c.name.startswith("lint.")]
    assert lint and all(c.passed for c in lint)
    equivalence = next(c for c in exact.checks if c.name == "equivalence")
    assert equivalence.value <= EQUIVALENCE_ATOL
    assert result.check("agreement").passed
    perf = fast.performance
    assert f"{perf['fusable_residual_adds']}/{perf['residual_adds']}" == FUSABLE_ADDS.get(name, "0/0")


def test_float_islands_are_the_tables_and_said_once(converted):
    name, result = converted
    assert not isinstance(result, PipelineError), f"{name}: {result}"
    islands = ISLANDS.get(name, [])
    assert result.int8.float_islands == islands
    said = [n for n in result.notes if n.startswith("float islands")]
    assert said == ([f"float islands (kept in float between Q/DQ, run by TensorRT in high precision): "
                     f"{', '.join(islands)}"] if islands else [])


def test_convtranspose_runs_on_an_engine_that_computes_it(converted):
    name, result = converted
    if name in ("unet_convtranspose", "conv1d_autoencoder"):
        assert computes_conv_transpose(result.engine)
        assert "ConvTranspose" in [n.op_type for n in result.graphs["exact"].model.graph.node]


def test_convtranspose_on_an_engine_that_miscomputes_it_is_kept_in_float(tmp_path):
    """onednn computes quantized ConvTranspose ~110 steps off here (engines.conv_transpose_error): named, the
    layer goes to a float island and the exact graph stays bit-exact."""
    if computes_conv_transpose("onednn"):
        pytest.skip("onednn computes ConvTranspose faithfully on this CPU")
    result = quantize_to_tensorrt(zoo.build("unet_convtranspose"), zoo.calibration("unet_convtranspose"), tmp_path,
                                  QuantizeConfig(engine="onednn"))
    assert result.int8.float_islands == ["up"]
    assert next(c for c in result.graphs["exact"].checks if c.name == "equivalence").value <= EQUIVALENCE_ATOL


@pytest.mark.parametrize("name", ["unet_convtranspose", "batchnorm_after_add"])
def test_qat_keeps_the_same_islands_and_convtranspose_engine(name, tmp_path):
    """QAT's prepare wraps the table's islands and gives ConvTranspose per-tensor weights as PTQ does (calibrated
    only, no training: the structure is what is tested); its INT8 model goes through the pipeline with int8=."""
    from eager2trt.eager import qat

    model = qat.prepare(zoo.build(name))
    int8 = qat.convert(model, qat.calibrate(model, zoo.calibration(name)))
    assert int8.float_islands == ISLANDS.get(name, [])
    if name == "unet_convtranspose":
        assert computes_conv_transpose(torch.backends.quantized.engine)
    result = quantize_to_tensorrt(zoo.build(name), zoo.calibration(name), tmp_path, int8=int8,
                                  float_twin=qat.float_twin(model))
    assert next(c for c in result.graphs["exact"].checks if c.name == "equivalence").value <= EQUIVALENCE_ATOL
    assert result.graphs["fast"].path.is_file()


class _Functional(zoo.Stubbed):
    """A conv block with a functional activation on the quantized tensor, which no module wrap can reach."""

    def __init__(self, fn):
        super().__init__()
        self.block, self.fn, self.head = zoo.cbr(3, 8), fn, zoo.Head(8)

    def body(self, x):
        return self.head(self.fn(self.block(x)))


class _PlainSqueeze(zoo.SqueezeNet):
    """`.squeeze()` without a dimension on the quantized pooled map."""

    def body(self, x):
        return self.fc(self.pool(self.stem(x)).squeeze())


class _CircularPadding(zoo.ActivationNet):
    """A conv with padding_mode 'circular', which quantized convolution refuses at convert."""

    def __init__(self):
        super().__init__(nn.ReLU)
        self.b2[0].padding_mode = "circular"


class _Unpreparable(zoo.ActivationNet):
    """An unused ConvTranspose3d: eager prepare refuses its per-channel weight observer. The ConvTranspose2d before
    it, with per-tensor weights, must not be blamed."""

    def __init__(self):
        super().__init__(nn.ReLU)
        self.up = nn.ConvTranspose2d(4, 4, 2)
        self.extra = nn.Sequential(nn.ConvTranspose3d(4, 4, 2))


@pytest.mark.parametrize("model, words", [
    (_Functional(F.gelu), ["ONNX export of the INT8 model fails at head (Flatten), which receives a float tensor",
                           "F.gelu", "nn.GELU"]),
    (_Functional(F.silu), ["does not run", "in the model's own forward()", "nn.SiLU"]),
    (_Unpreparable(), ["cannot prepare extra.0 (ConvTranspose3d)", "qconfig = None"]),
    (_CircularPadding(), ["cannot convert b2.0 (ConvReLU2d) to INT8 ('padding_mode' circular is not supported",
                          "b2.0.qconfig = None"]),
    (_PlainSqueeze(), ["the model's forward() calls .squeeze() without a dimension", "x.squeeze(-1).squeeze(-1)"]),
])
def test_a_layer_it_cannot_take_is_one_sentence_naming_its_path(model, words, tmp_path):
    with pytest.raises(PipelineError) as exc:
        quantize_to_tensorrt(model.eval(), zoo.calibration("elu"), tmp_path)
    text = str(exc.value)
    assert all(w in text for w in words), text
    assert "\n" not in text and "Traceback" not in text


def test_conv1d_and_one_channel_inputs_are_told_their_own_layout(tmp_path):
    conv1d, sr = zoo.build("conv1d_1ch"), zoo.build("superres_pixelshuffle")
    with pytest.raises(PipelineError, match=r"not NCL \(batch, channels, length\) as the model's first convolution "
                                            r"\(features.0\) takes; add the batch dimension"):
        quantize_to_tensorrt(conv1d, [torch.randn(1, 64)], tmp_path)
    with pytest.raises(PipelineError) as exc:
        quantize_to_tensorrt(sr, [torch.randn(2, 3, 16, 16)], tmp_path)
    assert str(exc.value).endswith("has 3 channels but the model's first convolution takes 1 (c1.0); pass 1-channel "
                                   "inputs")


def test_the_guide_lists_every_row_of_the_layer_table():
    guide = (Path(__file__).resolve().parents[1] / "docs" / "bring_your_own_model.md").read_text()
    assert markdown_table() in guide
    assert len({row.name for row in LAYERS}) == len(LAYERS)


def test_only_optional_extra_arguments_are_left_out_of_the_export():
    """forward(x, targets=None) is exported with x alone; a required second input (a two-input model) is not hidden."""
    from eager2trt.eager.export import input_only

    with_targets, two_inputs = zoo.build("forward_targets"), zoo.build("two_inputs")
    assert input_only(with_targets) is not with_targets and input_only(two_inputs) is two_inputs
    x = zoo.calibration("forward_targets")[0]
    torch.testing.assert_close(input_only(with_targets)(x), with_targets(x))


def test_bench_zoo_writes_one_row_per_model(tmp_path):
    import bench.zoo as bench_zoo

    args = bench_zoo.get_args_parser().parse_args(["--models", "gelu", "--output-dir", str(tmp_path), "--name", "t"])
    assert bench_zoo.main(args) == 0
    assert "| gelu | 3x16x16 | ok | ok | b1.2, b2.2 | 0/0 |" in (tmp_path / "t.md").read_text()


def multi_io_batches(name: str, n: int, seed: int) -> list:
    """Seeded random batches of 8 of a MULTI_IO model: a tensor for one input, a tuple of one tensor per input."""
    return zoo.calibration(name, batches=n, batch=8, seed=seed)


@pytest.fixture(scope="module", params=sorted(zoo.MULTI_IO))
def multi_io(request, tmp_path_factory):
    name = request.param
    out = tmp_path_factory.mktemp(name)
    result = quantize_to_tensorrt(zoo.build(name), multi_io_batches(name, 4, 1), out,
                                  images=multi_io_batches(name, 2, 2), name=name)
    return name, out, result


def test_several_inputs_and_outputs_become_named_graph_inputs_and_outputs(multi_io):
    """Issue 23: a detector's two heads are two graph outputs, a two-input model's inputs keep forward()'s names."""
    name, out, result = multi_io
    expected = {"detector_two_outputs": (["input"], ["output0", "output1"]),
                "two_inputs": (["rgb", "depth"], ["output"])}[name]
    for mode in ("exact", "fast"):
        graph = onnx.load(str(result.graphs[mode].path))
        assert ([i.name for i in graph.graph.input], [o.name for o in graph.graph.output]) == expected


def test_every_output_is_checked_and_the_exact_graph_is_bit_exact_on_each(multi_io):
    name, out, result = multi_io
    outputs = [o.name for o in onnx.load(str(result.graphs["exact"].path)).graph.output]
    for check in ("equivalence", "agreement", "fast_error_ratio"):
        c = result.check(check)
        assert c.passed, c.sentence()
        if len(outputs) > 1:  # one figure per output, and the words say each was checked
            assert sorted(c.figures["outputs"]) == outputs and "each checked" in c.detail
    eq = result.check("equivalence")
    per = eq.figures["outputs"].values() if len(outputs) > 1 else [eq.figures]
    assert all(f["max_abs_diff"] <= EQUIVALENCE_ATOL and f["samples"] == 32 + 16 for f in per)
    assert result.tallies["real"].samples == 16 and result.tallies["random"].samples == 32


def test_the_exact_graph_computes_what_pytorch_int8_computes_output_by_output(multi_io):
    """Beyond the run's own checks: the written graph, run on a new batch by its input names, gives each output
    of PyTorch INT8 (agreement within a quantization step of the outputs' scale)."""
    from eager2trt.runtime.backends import OnnxRunner, PyTorchRunner

    name, out, result = multi_io
    batch = multi_io_batches(name, 1, 7)[0]
    got, want = OnnxRunner(result.graphs["exact"].path).outputs(batch), PyTorchRunner(result.int8).outputs(batch)
    assert len(got) == len(want) == len(result.tallies["real"].output_names)
    for g, w in zip(got, want):
        assert g.shape == w.shape and np.abs(g - w).max() <= 0.05 * np.abs(w).max()


def test_one_failing_output_fails_the_check_and_is_named():
    from eager2trt.checks.compare import each_output, equivalence
    from eager2trt.checks.tally import Stats

    a = np.zeros((4, 3))
    checks = [equivalence(Stats.of(a, a)), equivalence(Stats.of(a + 1, a))]
    joined = each_output(checks, ["cls", "box"])
    assert not joined.passed and joined.value == 1.0 and joined.detail.startswith("output box (of cls, box")
    assert joined.figures["outputs"]["cls"]["max_abs_diff"] == 0.0
    assert each_output(checks[:1], ["cls"]) is checks[0]


def test_a_batch_with_the_wrong_number_of_inputs_is_refused_naming_them(tmp_path):
    with pytest.raises(PipelineError) as info:
        quantize_to_tensorrt(zoo.build("two_inputs"), [torch.randn(4, 3, 16, 16)], tmp_path)
    assert str(info.value) == ("calibration_batches[0] is a Tensor (4, 3, 16, 16), but the model takes 2 inputs (rgb, "
                               "depth); pass each batch as a tuple of 2 tensors, or a dict keyed by those names")
    assert not list(tmp_path.glob("*.onnx"))


def test_a_dict_batch_is_read_by_forward_names(tmp_path):
    """ModelOpt's convention: calibration data keyed by input name, in any order."""
    batches = [{"depth": d, "rgb": r} for r, d in multi_io_batches("two_inputs", 2, 3)]
    result = quantize_to_tensorrt(zoo.build("two_inputs"), batches, tmp_path, fast=None)
    assert result.check("equivalence").value == 0.0
