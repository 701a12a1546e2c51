"""Every torchvision quantizable classifier at a non-CIFAR size through the graph-level path (bench/generality.py's
`convert`): fuse, quantize (qnnpack, random calibration), export, the exact rewrite or its recorded reason, the
fast placement lint-clean with the performance rules as errors, exact equivalence, the fast error bound and the
agreement rule. 64 px (Inception v3 at 75, the smallest it accepts), batch 2. resnext101_32x8d is marked slow:
pytest.ini deselects it by default; run it with `-m slow`."""

import pytest

from bench.generality import convert
from eager2trt.contract import EQUIVALENCE_ATOL, FAST_ERROR_RATIO
from eager2trt.graph import lint
from eager2trt.graph.surgery import FIXED_QPARAMS, ExactRefused, make_tensorrt_ready

SIZE = 64
# residual Adds each model has (all of them fusable in the fast graph)
ADDS = {"resnet18": 8, "resnet50": 16, "resnext101_32x8d": 33, "mobilenet_v2": 10, "mobilenet_v3_large": 10,
        "shufflenet_v2_x0_5": 0, "shufflenet_v2_x1_0": 0, "googlenet": 0, "inception_v3": 0}
REFUSED = {"mobilenet_v3_large": FIXED_QPARAMS}  # the exact rewrite's recorded reason
MATRIX = [pytest.param(a, marks=pytest.mark.slow) if a == "resnext101_32x8d" else a for a in ADDS]


@pytest.fixture(scope="module", params=MATRIX)
def converted(request, tmp_path_factory):
    return convert(request.param, SIZE, tmp_path_factory.mktemp(request.param))


def test_exact_graph_is_bit_exact_or_its_refusal_is_recorded(converted):
    row = converted.row
    if converted.arch in REFUSED:
        assert converted.exact is None and row["exact"] == f"refused ({REFUSED[converted.arch]})"
        assert "fixed uint8 quantization" in converted.refusal and "use the fast graph" in converted.refusal
        with pytest.raises(ExactRefused) as exc:  # the rewrite itself refuses with the same typed reason
            make_tensorrt_ready(converted.original)
        assert exc.value.kind == REFUSED[converted.arch] and exc.value.nodes
    else:
        assert row["exact"] == "ok" and row["exact_max_abs_diff"] <= EQUIVALENCE_ATOL, row
        assert not any(f.level == "error" for fs in lint.lint(converted.exact).values() for f in fs)


def test_fast_graph_is_lint_clean_within_its_bound_and_fuses_every_add(converted):
    row = converted.row
    assert row["fast_lint_errors"] == 0 and row["fast"] == "ok", row
    assert row["fast_error_ratio"] <= FAST_ERROR_RATIO
    assert row["fusable_adds"] == f"{ADDS[converted.arch]}/{ADDS[converted.arch]}"
    summary = lint.performance_summary(converted.fast)
    assert summary["unfused_activations"] == summary["unfused_maxpools"] == 0
    if converted.arch in ("googlenet", "inception_v3"):  # every Concat input shares the output's scale
        assert not lint.concat_inputs_share_scale(__import__("onnx_graphsurgeon").import_onnx(converted.fast))
        assert row["rewrites"].get("share_concat_scales", 0) > 0
    if converted.arch.startswith("shufflenet"):  # the channel shuffle's Q/DQ folded into the copies
        assert row["rewrites"]["fold_qdq_after_data_movement"] > 0


def test_pytorch_int8_agrees_with_its_graph(converted):
    assert converted.row["agreement"] == "ok", converted.row
