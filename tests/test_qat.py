"""A short QAT run on CPU (ResNet18 at 32x32, 256 random images, one epoch): it converts to the same kind of INT8
model as PTQ, keeps the calibrated activation ranges, and its export passes the exact surgery, the lint and
equivalence. No accuracy bound: the images are noise."""

import onnx
import pytest
import torch
from torch.ao import quantization as tq

from eager2trt.runtime.inputs import random_batches
from graph_checks import onnx_logits, ort_equivalence as equivalence
from eager2trt.eager import qat
from eager2trt.eager.data import Split
from eager2trt.eager.export import export_onnx
from eager2trt.eager.model import build_model, fuse
from eager2trt.eager.quantize import quantize
from eager2trt.errors import PipelineError
from eager2trt.graph.lint import lint, passed
from eager2trt.graph.surgery import make_tensorrt_ready

ENGINE = "qnnpack"  # faithful to the Q/DQ graph on every x86 CPU this runs on


def noise_split(n: int, seed: int) -> Split:
    gen = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen),
                 torch.randint(0, 10, (n,), generator=gen))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    fp32 = build_model("resnet18").eval()
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(32, 3, 32, 32, generator=gen) for _ in range(2)]
    run = qat.quantize_qat(fp32, calib, noise_split(256, 2), noise_split(64, 3), epochs=1, calibration="minmax",
                           engine=ENGINE, device=torch.device("cpu"))
    int8, history = run.int8, run.history
    ptq = quantize(fuse(fp32, (3, 32, 32))[0], calib, calibration="minmax", engine=ENGINE)
    return fp32, int8, ptq, history, run.float_model


def quantized_types(model):
    return [type(m).__name__ for m in model.modules()]


def test_qat_converts_to_the_ptq_kind_of_model_with_the_calibrated_ranges(trained):
    fp32, int8, ptq, history, _ = trained
    assert quantized_types(int8) == quantized_types(ptq)
    assert len(history.epochs) == 1 and history.epochs[0]["steps"] == 2
    # activation ranges were fixed at calibration: the same scales as PTQ on the same batches
    for name in ("quant", "layer1.0.conv1", "layer4.1.conv2", "fc"):
        a, b = int8.get_submodule(name), ptq.get_submodule(name)
        assert torch.allclose(torch.as_tensor(a.scale), torch.as_tensor(b.scale), rtol=1e-4), name
    # ...while the weights learned
    w_qat, w_ptq = int8.layer1[0].conv1.weight(), ptq.layer1[0].conv1.weight()
    assert w_qat.qscheme() == w_ptq.qscheme() and not w_qat.q_per_channel_zero_points().any()
    assert w_qat.int_repr().abs().max() <= 127
    assert not torch.equal(w_qat.int_repr(), w_ptq.int_repr())
    assert any(p.requires_grad for p in fp32.parameters()) and fp32.training is False  # the FP32 model untouched


def test_qat_model_exports_and_passes_the_exact_surgery(trained, tmp_path):
    _, int8, _, _, _ = trained
    path = export_onnx(int8, tmp_path / "qat_int8.onnx", random_batches((1, 3, 32, 32), 1)[0])
    original = onnx.load(str(path))
    ready, report = make_tensorrt_ready(original)
    assert report["rewrites"]["int8_zero_points"] > 0 and passed(lint(ready))
    eq = equivalence(original, ready, random_batches((4, 3, 32, 32), 2))
    assert eq.passed, eq
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():  # the graph computes what the QAT INT8 model computes (qnnpack is faithful to it)
        eager = int8(x)
    graph = torch.from_numpy(onnx_logits(ready, [x.numpy()]))
    assert (graph.argmax(1) == eager.argmax(1)).float().mean() >= 0.75


def test_float_twin_is_the_float_model_the_int8_one_rounds(trained, tmp_path):
    # fine-tuning moved the weights away from the FP32 checkpoint's: the fast graph's unrounded biases come from
    # the twin (BatchNorm folded as convert folds it), which holds every Conv/Linear the INT8 model quantizes
    from eager2trt.graph.sensitivity import restore_float_biases
    from eager2trt.pipeline import make_graph

    fp32, int8, _, _, twin = trained
    assert not any(isinstance(m, qat.QAT_MODULES) for m in twin.modules()) and not twin.training
    assert all(not fq.fake_quant_enabled[0] for fq in twin.modules() if isinstance(fq, tq.FakeQuantizeBase))
    w, q = twin.layer1[0].conv1[0].weight.detach(), int8.layer1[0].conv1.weight()
    step = q.q_per_channel_scales().float().view(-1, 1, 1, 1)
    assert ((w - q.dequantize()).abs() <= 0.51 * step + 1e-7).all()  # the int8 weight is the twin's, rounded
    assert torch.equal(int8.layer1[0].conv1.bias().detach(), twin.layer1[0].conv1[0].bias.detach())
    x = random_batches((1, 3, 32, 32), 1)[0]
    export = onnx.load(str(export_onnx(int8, tmp_path / "int8.onnx", x)))
    twin_onnx = onnx.load(str(export_onnx(twin, tmp_path / "twin.onnx", x)))
    convs = sum(n.op_type in ("Conv", "Gemm") for n in twin_onnx.graph.node)
    fast = make_graph(export, "fast", fp32=twin_onnx)
    assert fast.report["rewrites"]["float_biases"] == convs == 21  # ResNet18: 20 convolutions and the classifier
    assert restore_float_biases(fast.model, twin_onnx)[1] == convs


def test_qat_prepare_uses_the_project_scheme():
    model = qat.prepare(build_model("resnet18"))
    fq = model.layer1[0].conv1.weight_fake_quant
    assert (fq.quant_min, fq.quant_max, fq.qscheme) == (-127, 127, torch.per_channel_symmetric)
    act = model.quant.activation_post_process
    assert act.qscheme == torch.per_tensor_symmetric and act.dtype == torch.quint8
    assert isinstance(act.activation_post_process, tq.HistogramObserver)


def test_qat_refuses_no_calibration_batches_and_no_epochs():
    with pytest.raises(PipelineError, match="no calibration batches"):
        qat.calibrate(qat.prepare(build_model("resnet18")), [])
    with pytest.raises(PipelineError, match="epochs must be positive"):
        qat.quantize_qat(build_model("resnet18"), [], noise_split(8, 0), noise_split(8, 1), epochs=0)


def test_a_qat_model_is_studied_with_its_float_twin(trained, tmp_path):
    # the fallback of a QAT model: the FP32 ONNX stays the reference, but a layer kept in float takes the twin's
    # weight and bias (the FP32 checkpoint's no longer round to the fine-tuned INT8 ones); every layer in float is
    # then the twin itself
    from eager2trt.graph import sensitivity as sens

    fp32, int8, _, _, twin = trained
    x = random_batches((1, 3, 32, 32), 1)[0]
    export = onnx.load(str(export_onnx(int8, tmp_path / "int8.onnx", x)))
    fp32_onnx = onnx.load(str(export_onnx(fp32, tmp_path / "fp32.onnx", x)))
    twin_onnx = onnx.load(str(export_onnx(twin, tmp_path / "twin.onnx", x)))
    batches = [b.numpy() for b in random_batches((16, 3, 32, 32), 2)]
    s = sens.study(export, batches, fp32=fp32_onnx, float_from=twin_onnx, threads=1)
    assert s.weights_source.startswith("the float model's ONNX (float_from)'s weights (all 21 matched")
    assert s.float_biases == 21
    every = onnx_logits(s.variant(s.layers), batches)
    ref = onnx_logits(twin_onnx, batches)
    assert abs(every - ref).max() <= 1e-4 * abs(ref).max()
