"""Every torchvision quantizable classifier at a non-CIFAR size through quantize_to_tensorrt (bench/generality.py's
`run_model`): variance-preserving random init, seeded random calibration at 64 px (Inception v3 at 75, the
smallest it accepts), QuantizeConfig(calibration="percentile", engine="auto"), fast="fp32". The pipeline's own
checks decide (a failed one raises, and the row records "FAILED: <sentence>"); these tests read the result: the
exact graph written bit-exact or its refusal recorded with its kind, the fast graph written with every residual
Add fusable, the agreement rule and scale provenance passed. resnext101_32x8d is marked slow: pytest.ini
deselects it by default; run it with `-m slow`."""

import pytest

from bench.generality import run_model
from eager2trt.contract import EQUIVALENCE_ATOL, FAST_ERROR_RATIO
from eager2trt.graph import lint
from eager2trt.graph.onnx_utils import load_onnx
from eager2trt.graph.surgery import FIXED_QPARAMS, ExactRefused, make_tensorrt_ready

SIZE = 64
# residual Adds each model has (all of them fusable in the fast graph)
ADDS = {"resnet18": 8, "resnet50": 16, "resnext101_32x8d": 33, "mobilenet_v2": 10, "mobilenet_v3_large": 10,
        "shufflenet_v2_x0_5": 0, "shufflenet_v2_x1_0": 0, "googlenet": 0, "inception_v3": 0}
REFUSED = {"mobilenet_v3_large": FIXED_QPARAMS}  # the exact rewrite's recorded reason
MATRIX = [pytest.param(a, marks=pytest.mark.slow) if a == "resnext101_32x8d" else a for a in ADDS]


@pytest.fixture(scope="module", params=MATRIX)
def converted(request, tmp_path_factory):
    conversion = run_model(request.param, SIZE, tmp_path_factory.mktemp(request.param))
    assert conversion.result is not None, conversion.row  # the pipeline raised: the row holds its sentence
    return conversion


def test_exact_graph_is_bit_exact_or_its_refusal_is_recorded(converted):
    row, exact = converted.row, converted.result.graphs["exact"]
    if converted.arch in REFUSED:
        assert exact.path is None and exact.model is None and row["exact"] == f"refused ({REFUSED[converted.arch]})"
        assert exact.refused_kind == REFUSED[converted.arch] and exact.record()["refused_kind"] == exact.refused_kind
        assert "fixed uint8 quantization" in exact.refused and "use the fast graph" in exact.refused
        with pytest.raises(ExactRefused) as exc:  # the rewrite itself refuses with the same typed reason
            make_tensorrt_ready(load_onnx(converted.result.paths.int8_onnx))
        assert exc.value.kind == REFUSED[converted.arch] and exc.value.nodes
        assert converted.result.graphs["fast"].path.is_file()  # while the fast graph is written
    else:
        assert row["exact"] == "ok" and exact.path.is_file() and exact.refused_kind is None, row
        assert row["exact_max_abs_diff"] <= EQUIVALENCE_ATOL
        assert not any(f.level == "error" for fs in lint.lint(exact.model).values() for f in fs)


def test_fast_graph_is_lint_clean_within_its_bound_and_fuses_every_add(converted):
    row, fast = converted.row, converted.result.graphs["fast"]
    assert row["fast"] == "ok" and fast.path.is_file(), row
    assert all(c.passed for c in fast.checks) and any(c.name.startswith("lint.") for c in fast.checks)
    assert row["fast_error_ratio"] <= FAST_ERROR_RATIO
    assert row["fusable_adds"] == f"{ADDS[converted.arch]}/{ADDS[converted.arch]}"
    assert fast.performance["unfused_activations"] == fast.performance["unfused_maxpools"] == 0
    if converted.arch in ("googlenet", "inception_v3"):  # every Concat input shares the output's scale
        assert not lint.concat_inputs_share_scale(__import__("onnx_graphsurgeon").import_onnx(fast.model))
        assert row["rewrites"].get("share_concat_scales", 0) > 0
    if converted.arch.startswith("shufflenet"):  # the channel shuffle's Q/DQ folded into the copies
        assert row["rewrites"]["fold_qdq_after_data_movement"] > 0


def test_pytorch_int8_agrees_with_its_graph(converted):
    assert converted.row["agreement"] == "ok", converted.row


def test_a_failed_run_is_a_row_and_the_command_exits_2(tmp_path, monkeypatch):
    """A PipelineError is recorded as "FAILED: <sentence>" in the table (not raised), and main returns 2."""
    import bench.generality as generality
    from eager2trt.errors import PipelineError

    def refuse(*args, **kwargs):
        raise PipelineError("agreement failed on 32 random inputs; try another engine")

    monkeypatch.setattr(generality, "quantize_to_tensorrt", refuse)
    args = generality.get_args_parser().parse_args(["--archs", "resnet18", "--size", "32", "--output-dir",
                                                    str(tmp_path), "--name", "t"])
    assert generality.main(args) == 2
    table = (tmp_path / "t.md").read_text()
    assert "| resnet18 | 32 | FAILED: agreement failed on 32 random inputs; try another engine | FAILED |" in table
