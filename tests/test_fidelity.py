"""PyTorch INT8 computes what its exported Q/DQ graph computes, with the default quantized engine.

Models are randomly initialised with a variance-preserving init (kaiming normal, fan_in): with eval-mode
BatchNorm an identity, torchvision's own init lets activations shrink or grow layer by layer, so untrained
logits would measure that drift, not quantization. Seeded, so every run sees the same weights and inputs.
"""

import pytest
import torch

from conftest import ROOT, run_script
from eager2trt.checks.agreement import check_agreement
from eager2trt.errors import PipelineError
from eager2trt.eager.export import export_onnx
from eager2trt.eager.model import build_model, fuse, load_state_dict, variance_preserving_init
from eager2trt.eager.engines import DEFAULT_ENGINE, faithful_engine, select_engine, supported_engines
from eager2trt.eager.quantize import quantize


def random_batches(n: int, seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 32, 32, generator=gen) for _ in range(n)]


@pytest.fixture(scope="module", params=["resnet18", "mobilenet_v2"])
def quantized(request, tmp_path_factory):
    """(arch, fused FP32, INT8 on the default engine, its Q/DQ ONNX path), calibrated on random inputs."""
    torch.manual_seed(0)
    fp32 = variance_preserving_init(build_model(request.param)).eval()
    fused, _ = fuse(fp32, (3, 32, 32))
    int8 = quantize(fused, random_batches(3, seed=1))
    path = export_onnx(int8, tmp_path_factory.mktemp(request.param) / "int8.onnx", random_batches(1, seed=1)[0])
    return request.param, fused, int8, path


def test_default_engine_int8_is_closer_to_its_graph_than_either_is_to_fp32(quantized):
    arch, fused, int8, path = quantized
    select_engine()
    r = check_agreement(int8, path, fused, random_batches(4, seed=2), real=False)
    assert r["engine"] == faithful_engine() == DEFAULT_ENGINE
    # ratio < 1: PyTorch-to-graph distance below both INT8 results' distances to FP32, so in particular below
    # the graph's own distance to FP32 (the "done when")
    assert r["ok"] and r["distance_ratio"] < 1.0, r
    # real=True adds the 99% argmax alternative and a 1.5 distance bound; a faithful engine passes either way
    assert check_agreement(int8, path, fused, random_batches(4, seed=2), real=True)["ok"]


def test_graph_of_another_model_fails_with_one_sentence(quantized, tmp_path):
    arch, fused, int8, _ = quantized
    select_engine()
    torch.manual_seed(1)  # the same architecture, other weights: same output shape, other function
    other_fused, _ = fuse(variance_preserving_init(build_model(arch)).eval(), (3, 32, 32))
    other = export_onnx(quantize(other_fused, random_batches(1, seed=1)), tmp_path / "other.onnx",
                        random_batches(1, seed=1)[0])
    with pytest.raises(PipelineError, match="different model") as exc:
        check_agreement(int8, other, fused, random_batches(2, seed=2), real=False)
    assert "\n" not in str(exc.value) and "--engine" in str(exc.value)


@pytest.mark.skipif("x86" not in supported_engines(), reason="this torch build has no x86 quantized engine")
def test_x86_drift_on_mobilenet_v2_is_caught_and_names_the_engine_to_use(quantized, capsys):
    arch, fused, _, path = quantized
    if arch != "mobilenet_v2":
        pytest.skip("x86 matches the graph on ResNet18 (no depthwise convolutions)")
    x86 = quantize(fused, random_batches(3, seed=1), engine="x86")
    assert "x86 engine drifts" in capsys.readouterr().err
    with pytest.raises(PipelineError, match=f"quantize with --engine {DEFAULT_ENGINE}"):
        check_agreement(x86, path, fused, random_batches(4, seed=2), real=False)
    with pytest.raises(PipelineError, match="x86 engine"):  # the real-image bounds do not let the drift through
        check_agreement(x86, path, fused, random_batches(4, seed=2), real=True)
    select_engine()


def test_default_engine_falls_back_with_a_one_line_notice(monkeypatch, capsys):
    import eager2trt.eager.engines as model

    model._notice.cache_clear()
    monkeypatch.setattr(model, "supported_engines", lambda: ["qnnpack", "x86"])
    monkeypatch.setattr(torch.backends.quantized, "engine", torch.backends.quantized.engine)  # restored after
    assert model.faithful_engine() == "qnnpack"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no onednn" in err[0] and "qnnpack" in err[0]


def test_cifar_stem_keeps_feature_maps_and_imagenet_stem_does_not():
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert build_model("mobilenet_v2").features(x).shape[-2:] == (1, 1)
        assert build_model("mobilenet_v2_cifar").features(x).shape[-2:] == (4, 4)
        assert build_model("mobilenet_v2_cifar")(x).shape == (2, 10)


def test_mobilenet_checkpoint_of_another_size_names_arch_and_classes(tmp_path):
    path = tmp_path / "mnv2_100.pt"
    torch.save(build_model("mobilenet_v2", num_classes=100).state_dict(), path)
    with pytest.raises(PipelineError, match="does not fit mobilenet_v2 with 10 classes"):
        load_state_dict(build_model("mobilenet_v2"), path, "mobilenet_v2")


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v2_cifar"])
def test_resnet_torch_accepts_mobilenet_archs(arch, tmp_path):
    from eager2trt.cli import quantize as resnet_torch

    args = resnet_torch.get_args_parser().parse_args(["--arch", arch, "--output-dir", str(tmp_path / "out")])
    resnet_torch.validate(args)
    assert args.arch == arch and args.engine == DEFAULT_ENGINE


def test_resnet_torch_help_lists_archs_and_engine_default():
    proc = run_script(ROOT / "resnet_torch.py", "--help")
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    assert proc.returncode == 0
    assert "mobilenet_v2_cifar" in text and f"(default: {DEFAULT_ENGINE})" in text
