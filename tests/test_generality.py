"""Export + surgery + verification on several eager-mode quantizable CNNs (random weights)."""

import pytest
import torch
from torchvision.models import quantization as qmodels

from eager2trt.graph import lint
from eager2trt.eager.export import export_onnx
from eager2trt.eager.model import fuse
from eager2trt.eager.quantize import quantize
from eager2trt.graph.onnx_utils import load_onnx
from eager2trt.graph.surgery import make_tensorrt_ready
from eager2trt.runtime.inputs import random_batches
from graph_checks import ort_equivalence


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v2"])
def test_export_surgery_and_verification(arch, tmp_path):
    model = getattr(qmodels, arch)(weights=None, quantize=False, num_classes=10).eval()
    fused, _ = fuse(model)
    int8 = quantize(fused, [torch.randn(8, 3, 32, 32) for _ in range(2)])
    path = export_onnx(int8, tmp_path / f"{arch}.onnx")
    original = load_onnx(path)
    modified, report = make_tensorrt_ready(original)
    assert report["rewrites"]["remove_qdq_casts"] > 0 and report["rewrites"]["int8_zero_points"] > 0
    assert report["ops_after"].get("Cast", 0) == 0
    findings = lint.lint(modified)
    assert not any(findings.values()), {k: v[:2] for k, v in findings.items() if v}
    assert any(lint.lint(original).values())  # the raw export is not TensorRT-ready
    eq = ort_equivalence(original, modified, random_batches((4, 3, 32, 32), 2))
    assert eq.passed, eq
