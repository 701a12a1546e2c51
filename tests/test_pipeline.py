"""The pipeline API and the bring-your-own-model path (README), on a small custom quantizable CNN."""

import json

import onnx
import pytest
import torch

from conftest import ROOT, run_script
from eager2trt.graph import lint
from eager2trt.reports import metrics
from eager2trt.runtime.backends import OnnxRunner, PyTorchRunner, is_quantized_module
from eager2trt.errors import PipelineError
from eager2trt.pipeline import quantize_to_tensorrt


def test_bring_your_own_model_example_runs(tmp_path):
    proc = run_script(ROOT / "examples" / "bring_your_own_model.py", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    ready = onnx.load(str(out / "resnet_quantized_cifar10_modified.onnx"))
    onnx.checker.check_model(ready, full_check=True)
    assert not any(lint.lint(ready).values())
    assert "checks: all" in proc.stdout and "rules pass" in proc.stdout
    # the same file from the command line, as a user who exported their own INT8 ONNX would run it
    proc = run_script(ROOT / "onnx_gs.py", "--input", out / "resnet_quantized_cifar10.onnx", "--output",
                      tmp_path / "cli.onnx", "--metrics", tmp_path / "m.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert onnx.load(str(tmp_path / "cli.onnx")).SerializeToString() == ready.SerializeToString()


def test_two_head_segmentation_example_runs(tmp_path):
    """examples/segmentation_two_heads.py: dict outputs become named graph outputs, label maps are scored per pixel,
    the held-out data comes from a DataLoader, and every check reports each output."""
    proc = run_script(ROOT / "examples" / "segmentation_two_heads.py", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    graph = onnx.load(str(tmp_path / "out" / "two_head_unet_quantized_modified.onnx"))
    assert [o.name for o in graph.graph.output] == ["seg", "depth"]
    assert "fp32: per-pixel top-1 1.0000, mIoU 1.0000" in proc.stdout
    assert "equivalence per output: {'seg': 0.0, 'depth': 0.0}" in proc.stdout


def test_pipeline_result_is_verified_and_typed(tmp_path):
    from examples.bring_your_own_model import TinyResNet

    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(8, 3, 32, 32)
    result = quantize_to_tensorrt(model, [torch.randn(16, 3, 32, 32) for _ in range(2)], tmp_path, images=[x])
    exact = result.graphs["exact"]
    eq = next(c for c in exact.checks if c.name == "equivalence")
    assert eq.passed and eq.figures["samples"] == 40 and eq.value == 0.0  # 32 random + the 8 given images
    assert all(c.passed for c in result.checks) and result.check("agreement").figures["inputs"] == "real"
    assert result.fusion_max_abs_diff < 1e-3 and exact.report["rewrites"]["int8_zero_points"] > 0
    assert result.graphs["fast"].path == result.paths.int8_onnx_fast and result.accuracy == {}
    assert is_quantized_module(result.int8) and not is_quantized_module(result.fp32)
    ort = OnnxRunner(result.paths.int8_onnx_modified)
    assert ort.quantized and not OnnxRunner(result.paths.fp32_onnx).quantized
    pt = PyTorchRunner(result.int8)(x)
    assert torch.nn.functional.cosine_similarity(pt.flatten(), ort(x).flatten(), dim=0) > 0.99


def test_pipeline_refuses_empty_or_wrong_calibration(tmp_path):
    from examples.bring_your_own_model import TinyResNet

    with pytest.raises(PipelineError, match="calibration_batches is empty"):
        quantize_to_tensorrt(TinyResNet(), [], tmp_path)
    with pytest.raises(PipelineError, match=r"calibration_batches\[0\] is uint8 \(raw pixels\)"):
        quantize_to_tensorrt(TinyResNet(), [torch.zeros(4, 3, dtype=torch.uint8)], tmp_path)
    with pytest.raises(PipelineError, match=r"images\[0\] has images of shape \(3, 16, 16\)"):
        quantize_to_tensorrt(TinyResNet(), [torch.randn(4, 3, 32, 32)], tmp_path, images=[torch.randn(4, 3, 16, 16)])
    with pytest.raises(PipelineError, match="labels has 3 entries for 4 images"):
        quantize_to_tensorrt(TinyResNet(), [torch.randn(4, 3, 32, 32)], tmp_path, images=[torch.randn(4, 3, 32, 32)],
                             labels=torch.zeros(3, dtype=torch.long))
    assert not list(tmp_path.glob("*.onnx"))  # every refusal came before any artifact


def test_accuracy_guard_fails_a_broken_calibration_loudly(tmp_path):
    """Calibrating (minmax) on images 20x dimmer than the evaluated ones: real activations saturate their ranges."""
    from examples.bring_your_own_model import TinyResNet
    from eager2trt.eager.model import variance_preserving_init
    from eager2trt.pipeline import QuantizeConfig

    torch.manual_seed(0)
    model = variance_preserving_init(TinyResNet()).eval()  # varied predictions, unlike torchvision's small init
    images = [torch.randn(64, 3, 32, 32)]
    with torch.no_grad():
        labels = model(images[0]).argmax(1)  # FP32 is right by construction: accuracy 1.0
    with pytest.raises(PipelineError, match=r"check int8_accuracy failed: measured [\d.]+, bound >= 0\.99.*budget "
                                            r"1 points.*recover most when left in float are .*QuantizeLinear.*"
                                            r"try calibration='auto'"):
        quantize_to_tensorrt(model, [0.05 * torch.randn(64, 3, 32, 32)], tmp_path, QuantizeConfig(calibration="minmax"),
                             images=images, labels=labels)
    assert not (tmp_path / "resnet_quantized_cifar10_modified.onnx").exists()  # no TensorRT-ready graph written


def test_metrics_reader_names_file_key_and_writer(tmp_path):
    path = tmp_path / "metrics.json"
    with pytest.raises(PipelineError, match=r"does not exist.*run python resnet_torch.py"):
        metrics.PyTorchAccuracy.read(path)
    metrics.update(path, "onnx_gs", {"x": 1})
    with pytest.raises(PipelineError, match=r"has no pytorch.fp32_accuracy; run python resnet_torch.py"):
        metrics.PyTorchAccuracy.read(path)
    metrics.update(path, "pytorch", {"fp32_accuracy": 0.9, "int8_accuracy": 0.89})
    assert metrics.PyTorchAccuracy.read(path).of("int8") == 0.89
    assert json.loads(path.read_text())["onnx_gs"] == {"x": 1}
    path.write_text("{not json")
    with pytest.raises(PipelineError, match="unreadable"):
        metrics.update(path, "pytorch", {"fp32_accuracy": 0.5})
    assert path.read_text() == "{not json"  # a corrupt record is never silently replaced


def test_exact_refusal_is_recorded_and_the_fast_graph_still_made(tmp_path):
    """MobileNetV3's Hardsigmoid has torch.ao's fixed uint8 quantization (zero point 0): no exact int8 form."""
    from eager2trt.eager.model import build_model, variance_preserving_init

    torch.manual_seed(0)
    model = variance_preserving_init(build_model("mobilenet_v3_large")).eval()
    result = quantize_to_tensorrt(model, [torch.randn(4, 3, 64, 64) for _ in range(2)], tmp_path)
    assert "zero point" in result.graphs["exact"].refused and result.graphs["exact"].path is None
    exact = result.graphs["exact"]  # the machine-readable kind is kept along with the sentence
    assert exact.refused_kind == "fixed-qparams" and exact.record()["refused_kind"] == "fixed-qparams"
    assert result.graphs["fast"].refused_kind is None and result.graphs["fast"].record()["refused_kind"] is None
    assert not result.paths.int8_onnx_modified.exists() and result.paths.int8_onnx_fast.exists()
    assert all(c.passed for c in result.graphs["fast"].checks)
    assert any("exact graph not made" in n for n in result.notes)
