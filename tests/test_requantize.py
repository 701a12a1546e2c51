"""INT8 models the user converted with their own qconfig (eager/requantize.py, quantize_to_tensorrt(int8=...)).

A small CNN (conv-bn-relu, a residual FloatFunctional add, linear) at 16 px: torch.ao's default x86 and qnnpack
qconfigs (affine activations) are re-derived in the symmetric scheme and go through every check; a symmetric user
qconfig is used as is; qint8 activations and weights from another float model are refused in one sentence."""

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper
from torch.ao import quantization as tq
from torch.ao.nn.quantized import FloatFunctional

from eager2trt.contract import REQUANTIZATION_RATIO_MAX
from eager2trt.eager.requantize import asymmetric_layers, load_int8_model, requantization_check
from eager2trt.errors import PipelineError
from eager2trt.runtime.backends import PyTorchRunner
from eager2trt.pipeline import quantize_to_tensorrt

SIZE = 16


class Small(nn.Module):
    """conv-bn-relu, a residual block whose add is a FloatFunctional, average pool, linear."""

    def __init__(self, c: int = 8, classes: int = 10):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()
        self.conv3, self.bn3 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.add, self.relu3 = FloatFunctional(), nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(c, classes)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(self.quant(x))))
        y = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(x)))))
        x = self.relu3(self.add.add(x, y))
        return self.dequant(self.fc(torch.flatten(self.pool(x), 1)))

    def fuse_model(self):
        """Fuse conv+bn(+relu) in place; numerics unchanged."""
        tq.fuse_modules(self, [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["conv3", "bn3"]], inplace=True)


def small(seed: int = 0) -> Small:
    torch.manual_seed(seed)
    model = Small()
    for bn in (model.bn1, model.bn2, model.bn3):  # non-trivial statistics, so fusion changes the weights
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def user_convert(fp32: nn.Module, qconfig: tq.QConfig, batches: list, engine: str) -> nn.Module:
    """What a user does: fuse, set a qconfig, prepare, calibrate, convert, on their engine."""
    torch.backends.quantized.engine = engine
    model = copy.deepcopy(fp32)
    model.fuse_model()
    model.qconfig = qconfig
    tq.prepare(model, inplace=True)
    with torch.no_grad():
        for x in batches:
            model(x)
    return tq.convert(model)


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(16, 3, SIZE, SIZE, generator=gen) for _ in range(2)]
    held = [torch.randn(32, 3, SIZE, SIZE, generator=gen) for _ in range(2)]
    return small(), calib, held


@pytest.fixture(autouse=True)
def _engine():
    previous = torch.backends.quantized.engine
    yield
    torch.backends.quantized.engine = previous


def quantize_linear_zero_points(path) -> list:
    model = onnx.load(str(path))
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"})
    return [consts[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]


@pytest.mark.parametrize("qconfig", ["x86", "qnnpack"])
def test_default_qconfig_is_rederived_symmetric_and_passes_every_check(data, qconfig, tmp_path):
    fp32, calib, held = data
    user = user_convert(fp32, tq.get_default_qconfig(qconfig), calib, qconfig)
    assert asymmetric_layers(user)  # affine activations: what TensorRT refuses
    result = quantize_to_tensorrt(fp32, calib, tmp_path, int8=user, images=held)
    assert result.int8 is not user and asymmetric_layers(result.int8) == []
    check = result.check("requantization")
    assert check.passed and 0 < check.value <= REQUANTIZATION_RATIO_MAX, check.line()
    assert check.figures["images"] == 64 and check.figures["inputs"] == "held-out images"
    assert check.figures["argmax_rederived_given"] >= 0.9
    assert result.check("equivalence").value == 0.0  # the exact graph is bit-exact to the re-derived export
    zero_points = quantize_linear_zero_points(result.paths.int8_onnx_modified)
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    assert all(c.passed for c in result.checks if c.name.startswith("lint."))
    assert result.paths.int8_onnx_fast.is_file()
    assert_ranges_are_the_users(user, result.int8)


def assert_ranges_are_the_users(user: nn.Module, derived: nn.Module) -> None:
    """Each re-derived scale is torch.ao's symmetric scale of the range recorded from the user's model, and that
    range lies within what the user's scale and zero point represent (quint8 0..255)."""
    ranges = derived.requantized["ranges"]
    assert {p.rsplit(".activation_post_process", 1)[0] for p in ranges} == {"quant", "conv1", "conv2", "conv3", "add", "fc"}
    for path, (lo, hi) in ranges.items():
        owner = path.rsplit(".activation_post_process", 1)[0]
        scale, zp = float(torch.as_tensor(user.get_submodule(owner).scale)), int(torch.as_tensor(user.get_submodule(owner).zero_point))
        assert -zp * scale - 1e-6 <= lo <= 0 <= hi <= (255 - zp) * scale + 1e-6, path
        assert float(torch.as_tensor(derived.get_submodule(owner).scale)) == pytest.approx(max(-lo, hi) / 127.5, rel=1e-6)
        assert int(torch.as_tensor(derived.get_submodule(owner).zero_point)) == 128


def test_symmetric_user_qconfig_is_used_as_is(data, tmp_path):
    fp32, calib, held = data
    symmetric = tq.QConfig(
        activation=tq.MinMaxObserver.with_args(dtype=torch.quint8, qscheme=torch.per_tensor_symmetric),
        weight=tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric))
    user = user_convert(fp32, symmetric, calib, "qnnpack")
    with torch.no_grad():
        expected = torch.cat([user(x) for x in held]).numpy()
    result = quantize_to_tensorrt(fp32, calib, tmp_path, int8=user, images=held)
    assert result.int8 is user
    check = result.check("requantization")
    assert check.passed and check.value is None and "used as is" in check.detail
    np.testing.assert_array_equal(PyTorchRunner(result.int8).outputs(torch.cat(held))[0], expected)
    assert result.tallies["real"].samples == len(expected)  # every held-out image went through every model
    assert result.check("equivalence").value == 0.0


def test_qint8_activations_are_refused_in_one_sentence(data, tmp_path):
    fp32, calib, _ = data
    qint8 = tq.QConfig(activation=tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
                       weight=tq.default_per_channel_weight_observer)
    user = user_convert(fp32, qint8, calib, "qnnpack")
    with pytest.raises(PipelineError, match=r"cannot run qint8 activations; convert it with "
                                            r"eager2trt\.eager\.quantize\.qconfig\(\).*without int8=") as exc:
        quantize_to_tensorrt(fp32, calib, tmp_path, int8=user)
    assert "\n" not in str(exc.value)


def test_weights_of_another_float_model_are_refused_naming_the_layer_unless_it_is_the_float_twin(data, tmp_path):
    fp32, calib, _ = data
    other = small(seed=1)
    user = user_convert(other, tq.get_default_qconfig("x86"), calib, "x86")
    with pytest.raises(PipelineError, match=r"int8's weights at conv1 are not the float model's rounded .*pass the "
                                            r"float model int8 was converted from as fp32"):
        quantize_to_tensorrt(fp32, calib, tmp_path / "refused", int8=user)
    torch.backends.quantized.engine = "x86"
    result = quantize_to_tensorrt(fp32, calib, tmp_path / "twin", int8=user, float_twin=other)
    assert result.check("requantization").passed and asymmetric_layers(result.int8) == []


def test_requantization_check_fails_beyond_its_bound():
    gen = np.random.default_rng(0)
    fp32 = gen.normal(size=(64, 10))
    user = fp32 + 0.01 * gen.normal(size=fp32.shape)
    within = requantization_check(user, fp32 + 0.015 * gen.normal(size=fp32.shape), fp32, "calibration images")
    beyond = requantization_check(user, fp32 + 0.05 * gen.normal(size=fp32.shape), fp32, "calibration images")
    assert within.passed and 1.2 < within.value < 1.8
    assert not beyond.passed and beyond.value > 4
    assert "pass the FP32 model without int8=" in beyond.sentence()


def test_a_saved_int8_model_loads_and_a_state_dict_is_refused(data, tmp_path):
    fp32, calib, held = data
    user = user_convert(fp32, tq.get_default_qconfig("x86"), calib, "x86")
    torch.save(user, tmp_path / "int8.pt")
    loaded = load_int8_model(tmp_path / "int8.pt")  # packed again for the engine auto picks
    with torch.no_grad():
        assert torch.equal(loaded(held[0]), user(held[0]))
    torch.save(user.state_dict(), tmp_path / "state.pt")
    with pytest.raises(PipelineError, match=r"is a state_dict; save the converted model whole with torch.save"):
        load_int8_model(tmp_path / "state.pt")
    with pytest.raises(PipelineError, match=r"does not exist; pass a file written by torch.save\(int8_model\)"):
        load_int8_model(tmp_path / "none.pt")


def test_resnet_torch_int8_model_needs_its_checkpoint(tmp_path):
    from eager2trt.cli import quantize

    parse = quantize.get_args_parser().parse_args
    with pytest.raises(PipelineError, match=r"--int8-model needs --checkpoint"):
        quantize.validate(parse(["--output-dir", str(tmp_path / "out"), "--int8-model", str(tmp_path / "x.pt")]))
    ckpt = tmp_path / "fp32.pt"
    ckpt.write_bytes(b"")
    with pytest.raises(PipelineError, match=r"--int8-model .*x.pt does not exist"):
        quantize.validate(parse(["--output-dir", str(tmp_path / "out"), "--checkpoint", str(ckpt),
                                 "--int8-model", str(tmp_path / "x.pt")]))
    assert quantize.options(parse(["--checkpoint", str(ckpt), "--int8-model", "u.pt"])).int8_model == Path("u.pt")


def test_main_job_takes_a_saved_x86_int8_model(tmp_path, monkeypatch):
    """resnet_torch.py --checkpoint FP32 --int8-model INT8 (jobs.main_job): ResNet18 with random weights on a
    20-image folder, converted by the user with the x86 default qconfig; re-derived, checked and recorded."""
    from test_data import make_image_folder

    from eager2trt import jobs
    from eager2trt.eager.data import iterate_batches, load_cifar10
    from eager2trt.eager.model import build_model
    from eager2trt.eager.train import Recipe
    from eager2trt.pipeline import QuantizeConfig

    make_image_folder(tmp_path / "data", per_class=2)
    small_folder = lambda root, download=False: load_cifar10(root, cache_dir=None, strict=False)  # noqa: E731
    monkeypatch.setattr(jobs, "load_cifar10", small_folder)  # the job insists on all 60,000 images
    torch.manual_seed(0)
    fp32 = build_model("resnet18").eval()
    torch.save(fp32.state_dict(), tmp_path / "fp32.pt")
    calib = [x for x, _ in iterate_batches(small_folder(tmp_path / "data")["train"], 16)]
    torch.save(user_convert(fp32, tq.get_default_qconfig("x86"), calib, "x86"), tmp_path / "int8.pt")
    opts = jobs.JobOptions(data=jobs.DataOptions(tmp_path / "data"), output_dir=tmp_path / "out",
                           checkpoint=tmp_path / "fp32.pt",
                           int8_model=tmp_path / "int8.pt", quantization=QuantizeConfig(calibration="percentile"),
                           recipe=Recipe(batch_size=16), calib_batches=None, accuracy_budget=100.0, fast=None,
                           latency_runs=1)
    out = jobs.main_job(opts)
    check = out["result"].check("requantization")
    assert check.passed and check.value is not None and check.figures["inputs"] == "held-out images"
    recorded = json.loads((tmp_path / "out" / "metrics.json").read_text())["pytorch"]
    assert recorded["int8_model"] == str(tmp_path / "int8.pt") and "requantization" in recorded["checks"]
    assert (tmp_path / "out" / "resnet_quantized_cifar10_modified.onnx").is_file()
