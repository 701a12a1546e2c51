"""PyTorch INT8 computes what its exported Q/DQ graph computes, on the engine chosen for this machine.

Models are randomly initialised with a variance-preserving init (kaiming normal, fan_in): with eval-mode
BatchNorm an identity, torchvision's own init lets activations shrink or grow layer by layer, so untrained
logits would measure that drift, not quantization. Seeded, so every run sees the same weights and inputs.
"""

import pytest
import torch

from conftest import ROOT, run_script
from eager2trt.checks.agreement import agreement
from eager2trt.checks.result import CheckFailed, require
from eager2trt.eager import engines
from eager2trt.eager.export import export_onnx
from eager2trt.eager.model import build_model, fuse, load_state_dict, variance_preserving_init
from eager2trt.eager.quantize import quantize
from eager2trt.errors import PipelineError
from eager2trt.runtime.backends import OnnxRunner, PyTorchRunner, logits
from eager2trt.checks.tally import Stats
from eager2trt.runtime.inputs import random_batches


def batches(n: int, seed: int) -> list:
    return random_batches((8, 3, 32, 32), n, seed)


def agreement_of(int8, graph_path, fused, inputs, real=False):
    """The agreement check on PyTorch INT8, its graph and FP32 logits for `inputs`."""
    pt, graph, fp32 = (logits(PyTorchRunner(int8), inputs), logits(OnnxRunner(graph_path), inputs),
                       logits(PyTorchRunner(fused), inputs))
    return agreement(Stats.of(pt, graph), Stats.of(pt, fp32), Stats.of(graph, fp32), real=real,
                     engine=torch.backends.quantized.engine)


@pytest.fixture(scope="module", params=["resnet18", "mobilenet_v2"])
def quantized(request, tmp_path_factory):
    """(arch, fused FP32, INT8 on the chosen engine, its Q/DQ ONNX path), calibrated on random inputs."""
    torch.manual_seed(0)
    fp32 = variance_preserving_init(build_model(request.param)).eval()
    fused, _ = fuse(fp32, (3, 32, 32))
    int8 = quantize(fused, batches(3, seed=1))
    path = export_onnx(int8, tmp_path_factory.mktemp(request.param) / "int8.onnx", batches(1, seed=1)[0])
    return request.param, fused, int8, path


def test_probe_tells_exact_from_saturating_engines():
    # qnnpack accumulates in int32 on every CPU; fbgemm multiplies u8*s8 pairwise into int16 on x86 CPUs without
    # AVX-512 VNNI (AMD EPYC, AVX2: tens of steps off) and exactly with it (Intel Xeon with VNNI: 6e-6 steps, seen on
    # the 2-core machine): the probe must split the two cleanly, never land in between
    if "qnnpack" in engines.supported_engines():
        assert engines.probe_error("qnnpack") < 0.5 and engines.is_faithful("qnnpack")
    for name in set(engines.supported_engines()) & {"fbgemm", "x86", "onednn"}:
        error = engines.probe_error(name)
        assert error < 0.5 or error > 10, (name, error)
        assert engines.is_faithful(name) == (error < 0.5)


def test_chosen_engine_int8_is_closer_to_its_graph_than_either_is_to_fp32(quantized):
    arch, fused, int8, path = quantized
    engines.select_engine()
    assert torch.backends.quantized.engine == engines.faithful_engines()[0]
    c = agreement_of(int8, path, fused, batches(4, seed=2))
    # ratio < 1: PyTorch-to-graph distance below both INT8 results' distances to FP32, so in particular below
    # the graph's own distance to FP32
    assert c.passed and c.figures["distance_ratio"] < 1.0, c
    assert agreement_of(int8, path, fused, batches(4, seed=2), real=True).passed


def test_graph_of_another_model_fails_with_one_sentence(quantized, tmp_path):
    arch, fused, int8, _ = quantized
    engines.select_engine()
    torch.manual_seed(1)  # the same architecture, other weights: same output shape, other function
    other_fused, _ = fuse(variance_preserving_init(build_model(arch)).eval(), (3, 32, 32))
    other = export_onnx(quantize(other_fused, batches(1, seed=1)), tmp_path / "other.onnx", batches(1, seed=1)[0])
    with pytest.raises(CheckFailed, match="different model") as exc:
        require(agreement_of(int8, other, fused, batches(2, seed=2)))
    assert "\n" not in str(exc.value)


@pytest.mark.skipif("fbgemm" not in engines.supported_engines(), reason="this torch build has no fbgemm engine")
def test_saturating_engine_drift_is_caught_and_names_the_engine_to_use(quantized, capsys):
    arch, fused, _, path = quantized
    if arch != "mobilenet_v2":
        pytest.skip("the drift is largest on depthwise convolutions")
    if engines.is_faithful("fbgemm"):
        pytest.skip("fbgemm accumulates exactly on this CPU (AVX-512 VNNI): no saturating engine to drift")
    engines.notice.cache_clear()
    drifting = quantize(fused, batches(3, seed=1), engine="fbgemm")
    assert "fbgemm engine saturates" in capsys.readouterr().err
    c = agreement_of(drifting, path, fused, batches(4, seed=2))
    assert not c.passed and "engine auto" in c.sentence()
    assert not agreement_of(drifting, path, fused, batches(4, seed=2), real=True).passed
    engines.select_engine()


def test_auto_engine_skips_a_saturating_onednn_with_a_one_line_notice(monkeypatch, capsys):
    engines.notice.cache_clear()
    monkeypatch.setattr(engines, "supported_engines", lambda: ["onednn", "qnnpack", "x86"])
    monkeypatch.setattr(engines, "is_faithful", lambda e: e == "qnnpack")
    monkeypatch.setattr(engines, "probe_error", lambda e: 0.0 if e == "qnnpack" else 99.0)
    assert engines.candidate_engines() == ["qnnpack"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "onednn" in err[0] and "saturates" in err[0] and "qnnpack" in err[0]


def test_no_faithful_engine_is_one_sentence(monkeypatch):
    monkeypatch.setattr(engines, "is_faithful", lambda e: False)
    with pytest.raises(PipelineError, match="accumulates int8 products exactly"):
        engines.candidate_engines()


def test_model_no_engine_can_run_names_the_cause(monkeypatch):
    class Broken(torch.nn.Module):
        """Quantizes its input, then calls an op no quantized engine implements on quint8."""

        def __init__(self):
            super().__init__()
            self.quant, self.dequant = torch.ao.quantization.QuantStub(), torch.ao.quantization.DeQuantStub()

        def forward(self, x):
            return self.dequant(torch.logdet(self.quant(x)))

        def fuse_model(self):
            pass

    with pytest.raises(PipelineError, match="does not run: the .* engine cannot run this model"):
        quantize(Broken().eval(), [torch.randn(1, 3, 4, 4)])


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


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v2_cifar", "shufflenet_v2_x1_0", "googlenet"])
def test_resnet_torch_accepts_every_arch(arch, tmp_path):
    from eager2trt.cli import quantize as resnet_torch

    args = resnet_torch.get_args_parser().parse_args(["--arch", arch, "--output-dir", str(tmp_path / "out")])
    resnet_torch.validate(args)
    assert args.arch == arch and args.engine == engines.AUTO


def test_resnet_torch_help_lists_archs_and_engine_default():
    proc = run_script(ROOT / "resnet_torch.py", "--help")
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    assert proc.returncode == 0
    assert "mobilenet_v2_cifar" in text and f"(default: {engines.AUTO})" in text
