"""The agreement rule (eager2trt.checks.agreement_rule) on hand-made logits, and on one small real model."""

import numpy as np
import onnx
import pytest
import torch

from eager2trt.runtime.backends import as_runner, logits as run_logits
from eager2trt.checks.agreement_rule import (agreement_rule, graph_activation_scales, model_activation_scales,
                                             rule_from_distances, scales_agree)
from eager2trt.contract import AGREEMENT_BALANCE_MAX, AGREEMENT_RATIO_MAX
from eager2trt.eager.export import export_onnx
from eager2trt.eager.model import build_model, fuse, variance_preserving_init
from eager2trt.eager.quantize import quantize

N, C = 64, 10


def logits(model, batches):
    return run_logits(as_runner(model), batches, desc=False)


def noise(seed, scale=0.1):
    return np.random.default_rng(seed).standard_normal((N, C)) * scale


FP32 = noise(0, 3.0)


def test_a_faithful_engine_passes():
    pt = FP32 + noise(1)
    v = agreement_rule(pt, pt + noise(2, 0.02), FP32)
    assert v.passed and v.failed is None and v.value < 0.5 and v.bound.startswith("distance_ratio <")


def test_two_independent_quantizations_of_one_model_pass():
    # what a deep random network makes of rounding steps one apart: the two INT8 errors decorrelate (ratio sqrt 2)
    v = agreement_rule(FP32 + noise(1), FP32 + noise(2), FP32)
    assert v.passed and 1.2 < v.figures["distance_ratio"] < 1.6 < AGREEMENT_RATIO_MAX


def test_a_graph_of_another_model_fails_on_the_ratio():
    other = noise(9, 3.0)
    v = agreement_rule(FP32 + noise(1), other + noise(2), FP32)
    assert not v.passed and v.failed == "ratio" and v.value > 10


def test_a_drifting_engine_fails_on_the_balance():
    # PyTorch INT8 three times further from FP32 than its graph, with the ratio itself in bounds
    v = agreement_rule(FP32 + noise(1, 0.1), FP32 + noise(1, 0.1) * 0.55 + noise(2, 0.01), FP32)
    assert v.figures["distance_ratio"] < AGREEMENT_RATIO_MAX
    assert not v.passed and v.failed == "balance" and v.figures["balance"] > AGREEMENT_BALANCE_MAX


def test_real_images_pass_on_argmax_agreement_alone():
    pt = FP32 * 1.0
    graph = FP32 * 1.5 + 0.5 * np.abs(FP32).max()  # far in distance, same order of logits per row
    assert not agreement_rule(pt, graph, FP32, real=False).passed
    v = agreement_rule(pt, graph, FP32, real=True)
    assert v.passed and v.figures["argmax_agreement"] == 1.0 and v.bound.startswith("argmax_agreement >=")


def test_rule_from_distances_is_the_same_rule():
    pt, graph = FP32 + noise(1), FP32 + noise(2)
    d = lambda a, b: float(np.linalg.norm(a - b))  # noqa: E731
    a, b = agreement_rule(pt, graph, FP32), rule_from_distances(d(pt, graph), d(pt, FP32), d(graph, FP32))
    assert (a.passed, a.value, a.bound) == (b.passed, b.value, b.bound)


def test_logits_of_other_shapes_are_refused():
    with pytest.raises(ValueError, match="logit shapes differ"):
        agreement_rule(FP32, FP32[:, :5], FP32)


def test_scales_agree_accepts_the_model_scales_and_fixed_qparams_only():
    model = [0.05, 0.1, 0.0321]
    assert scales_agree(model, [np.float32(0.1), 0.05, 1 / 256]).passed  # 1/256: torch.ao's fixed Hardsigmoid scale
    v = scales_agree(model, [0.05, 0.0322])
    assert not v.passed and v.failed == "scales" and v.figures["foreign_scales"] == 1
    assert not scales_agree(model, []).passed  # a graph without activation scales is no INT8 graph of this model


@pytest.fixture(scope="module")
def small_case(tmp_path_factory):
    """A random-init ResNet18 at 40 px, quantized with qnnpack: its graph, another calibration's, another model's."""
    work = tmp_path_factory.mktemp("rule")
    shape, gen = (3, 40, 40), torch.Generator().manual_seed(1)
    calib, inputs = ([torch.randn(2, *shape, generator=gen) for _ in range(k)] for k in (2, 3))
    torch.manual_seed(0)
    fp32 = variance_preserving_init(build_model("resnet18")).eval()
    fused, _ = fuse(fp32, shape)
    int8 = quantize(fused, calib, engine="qnnpack")
    own = export_onnx(int8, work / "own.onnx", calib[0])
    other_cal = export_onnx(quantize(fused, [torch.randn(2, *shape, generator=gen) for _ in range(2)],
                                     engine="qnnpack"), work / "other_cal.onnx", calib[0])
    torch.manual_seed(1)
    other_fused, _ = fuse(variance_preserving_init(build_model("resnet18")).eval(), shape)
    other_model = export_onnx(quantize(other_fused, calib, engine="qnnpack"), work / "other_model.onnx", calib[0])
    torch.backends.quantized.engine = "qnnpack"
    return int8, logits(fp32, inputs), logits(int8, inputs), inputs, own, other_cal, other_model


def test_small_real_case_own_graph_passes_foreign_graphs_fail(small_case):
    int8, fp32, pt, inputs, own, other_cal, other_model = small_case
    assert agreement_rule(pt, logits(own, inputs), fp32).passed
    assert scales_agree(model_activation_scales(int8), graph_activation_scales(onnx.load(str(own)))).passed
    # another calibration: numerically as close as the model's own rounding allows, caught by its scales
    assert not scales_agree(model_activation_scales(int8), graph_activation_scales(onnx.load(str(other_cal)))).passed
    v = agreement_rule(pt, logits(other_model, inputs), fp32)
    assert not v.passed and v.failed == "ratio"
