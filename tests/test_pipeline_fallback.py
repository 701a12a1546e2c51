"""quantize_to_tensorrt(fallback=True) and quantize_to_tensorrt(int8=) on the tiny CNN of test_sensitivity.py (one
activation made sensitive on purpose), and the main job's --fallback / --qat-epochs flags. Labels are the FP32
model's own top-1 (FP32 accuracy 1.0 by construction); no accuracy bound on a trained model."""

import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
from torch.ao import quantization as tq

from conftest import ROOT, run_script
from eager2trt import contract
from eager2trt.checks.result import Check, CheckFailed
from eager2trt.eager.model import variance_preserving_init
from eager2trt.errors import PipelineError
from eager2trt.graph import sensitivity as sens
from eager2trt.graph.lint import lint, passed
from eager2trt.pipeline import QuantizeConfig, quantize_to_tensorrt
from test_sensitivity import SHAPE, Tiny, sensitive_key, tiny_model


def labelled(model, batches: int, seed: int, size: int = 128):
    """Seeded random batches and the FP32 model's top-1 on them as labels."""
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(size, *SHAPE, generator=gen) for _ in range(batches)]
    with torch.no_grad():
        return xs, [model(x).argmax(1) for x in xs]


def calibration(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(16, *SHAPE, generator=gen) for _ in range(2)]


@pytest.fixture(scope="module")
def fallback_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("fallback")
    model = tiny_model()
    images, labels = labelled(model, 2, seed=7)
    holdout = labelled(model, 2, seed=8)  # stands for training images: another draw than the evaluated ones
    result = quantize_to_tensorrt(model, calibration(), out, QuantizeConfig(calibration="minmax"), images=images,
                                  labels=torch.cat(labels), fast=None, accuracy_budget=10.0, holdout=holdout,
                                  fallback=True)
    return out, result


def test_fallback_keeps_the_sensitive_layer_and_is_held_to_fp32(fallback_run):
    out, result = fallback_run
    g = result.graphs["fallback"]
    assert g.path == out / contract.INT8_ONNX_FALLBACK == result.paths.int8_onnx_fallback and g.path.exists()
    assert passed(lint(onnx.load(str(g.path))))
    record = g.record()["fallback"]
    assert record["reached"] and record["extra_layers"]["float_compute_layers"] >= 0
    # the sensitive activation (the first conv's ReLU output) is among the kept layers, found by structure
    export = onnx.load(str(result.paths.int8_onnx))
    keys = {u.label: u.key for u in sens.find_layers(gs.import_onnx(sens.prepare(export)))}
    assert sensitive_key(export) in {keys[label] for label in record["kept"]}
    guard = next(c for c in g.checks if c.name == "fallback_graph_accuracy")
    assert guard.passed and "held to FP32, not PyTorch INT8" in guard.detail
    assert next(c for c in g.checks if c.name == "fallback_holdout_accuracy").passed
    assert result.accuracy["fallback"] == g.accuracy >= result.accuracy["fp32"] - 0.10


def test_a_streamed_dataloader_gives_the_same_fallback(fallback_run, tmp_path):
    """data= (a DataLoader, read on each pass) instead of lists: the same layers kept, the same figures."""
    from torch.utils.data import DataLoader, TensorDataset

    _, listed = fallback_run
    model = tiny_model()
    images, labels = labelled(model, 2, seed=7)
    loader = DataLoader(TensorDataset(torch.cat(images), torch.cat(labels)), batch_size=128)
    streamed = quantize_to_tensorrt(model, calibration(), tmp_path, QuantizeConfig(calibration="minmax"), data=loader,
                                    fast=None, accuracy_budget=10.0, holdout=labelled(model, 2, seed=8),
                                    fallback=True)
    assert streamed.accuracy == listed.accuracy
    assert streamed.graphs["fallback"].record()["fallback"]["kept"] == listed.graphs["fallback"].record()["fallback"]["kept"]


def test_failed_int8_and_exact_guards_are_recorded_not_raised(fallback_run):
    _, result = fallback_run
    assert not result.check("int8_accuracy").passed  # the outlier's range crushes every other channel
    assert not result.check("exact_graph_accuracy").passed
    assert result.check("equivalence").passed  # the exact graph is still the export, bit for bit
    assert any("int8_accuracy failed (recorded)" in n for n in result.notes)
    assert result.graphs["exact"].path is not None


def test_main_job_records_the_fallback_graph(fallback_run, tmp_path):
    from eager2trt.jobs import JobOptions, record_of
    from eager2trt.reports import metrics

    _, result = fallback_run
    record = record_of(result, JobOptions(fallback=True), {}, {}, [], 1.0)
    for section, values in record.items():
        metrics.update(tmp_path / "metrics.json", section, values)
    assert record["onnx_gs_fallback"]["fallback"]["kept"] and record["pytorch"]["fallback"]
    assert not record["pytorch"]["checks"]["int8_accuracy"]["passed"]  # recorded, not dropped
    assert "fallback_graph_accuracy" not in record["pytorch"]["checks"]
    v = record["validation"][contract.INT8_ONNX_FALLBACK]
    assert v["reference"] == "fp32" and v["reference_accuracy"] == result.accuracy["fp32"]


def test_fallback_without_holdout_is_refused_before_anything_is_written(tmp_path):
    model = tiny_model()
    images, labels = labelled(model, 1, seed=7, size=16)
    with pytest.raises(PipelineError, match=r"fallback=True chooses the layers .* pass holdout=\(batches, labels\) "
                                            r"of training images"):
        quantize_to_tensorrt(model, calibration(), tmp_path, images=images, labels=torch.cat(labels), fallback=True)
    with pytest.raises(PipelineError, match="fallback=True holds the fallback graph to FP32 on labelled"):
        quantize_to_tensorrt(model, calibration(), tmp_path, holdout=(images, labels), fallback=True)
    assert not list(tmp_path.iterdir())


def test_a_fallback_that_cannot_reach_the_budget_names_the_layers_and_qat(tmp_path, monkeypatch):
    """Every layer in float is FP32 here, so the search is limited to one layer against a budget of 0 points."""
    from eager2trt.graph import fallback as fb

    search = fb.fallback
    monkeypatch.setattr(fb, "fallback", lambda s, report, budget: search(s, report, budget, max_layers=1))
    model = tiny_model()
    images, labels = labelled(model, 1, seed=7, size=64)
    with pytest.raises(CheckFailed) as info:
        quantize_to_tensorrt(model, calibration(), tmp_path, QuantizeConfig(calibration="minmax"), images=images,
                             labels=torch.cat(labels), fast=None, accuracy_budget=0.0,
                             holdout=labelled(model, 1, seed=8, size=64), fallback=True)
    sentence = str(info.value)
    assert info.value.check.name == "fallback_holdout_accuracy" and "\n" not in sentence
    assert "tried 1 in float: activation " in sentence and "--qat-epochs" in sentence
    assert not (tmp_path / contract.INT8_ONNX_FALLBACK).exists()


# ---------------------------------------------------------------- int8= (QAT)

class QatTiny(Tiny):
    def fuse_model(self, is_qat: bool = False):
        fuse = tq.fuse_modules_qat if is_qat else tq.fuse_modules
        fuse(self, [["conv1", "relu1"], ["conv2", "relu2"]], inplace=True)


def noise_split(n: int, seed: int):
    from eager2trt.eager.data import Split

    gen = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=gen),
                 torch.randint(0, 10, (n,), generator=gen))


def test_an_int8_model_from_qat_goes_through_the_same_checks(tmp_path):
    from eager2trt.eager import qat

    torch.manual_seed(0)
    torch.set_num_threads(1)
    fp32 = variance_preserving_init(QatTiny()).eval()
    calib = calibration()
    run = qat.quantize_qat(fp32, calib, noise_split(128, 2), noise_split(32, 3), epochs=1, calibration="minmax",
                           device=torch.device("cpu"))
    int8, history = run.int8, run.history
    assert len(history.epochs) == 1
    images, labels = labelled(fp32, 1, seed=7, size=32)
    result = quantize_to_tensorrt(fp32, calib, tmp_path, images=images, labels=torch.cat(labels), int8=int8,
                                  accuracy_budget=100.0, float_twin=run.float_model)
    assert result.int8 is int8
    weighted = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in run.float_model.modules())
    assert result.graphs["fast"].report["rewrites"]["float_biases"] == weighted > 0  # the twin's, every one
    assert not (tmp_path / "float_twin.onnx").exists()  # a temporary file, not an artifact
    eq = result.check("equivalence")
    assert eq.passed and eq.value == 0.0  # the exact graph is the QAT export, bit for bit
    assert result.paths.int8_onnx_modified.exists() and result.check("agreement").passed
    assert getattr(result.int8, "calibration_choice", None) is None


@pytest.fixture(scope="module")
def noise_qat():
    """(FP32 QatTiny, QATResult) after one QAT epoch on noise labels: its weights moved away from FP32's."""
    from eager2trt.eager import qat

    torch.manual_seed(0)
    torch.set_num_threads(1)
    fp32 = variance_preserving_init(QatTiny()).eval()
    return fp32, qat.quantize_qat(fp32, calibration(), noise_split(64, 2), noise_split(16, 3), epochs=1,
                                  calibration="minmax", device=torch.device("cpu"))


def test_a_given_int8_model_outside_the_budget_is_told_to_use_the_fallback(tmp_path, noise_qat):
    # calibration is not the fix for a model quantized elsewhere (QAT): the sentence names fallback=True, whose
    # graph starts from the unrounded float biases
    fp32, run = noise_qat
    images, labels = labelled(fp32, 1, seed=7, size=64)  # FP32's own top-1: FP32 scores 1.0, any INT8 error shows
    with pytest.raises(CheckFailed) as failure:
        quantize_to_tensorrt(fp32, calibration(), tmp_path / "out", images=images, labels=torch.cat(labels),
                             int8=run.int8, float_twin=run.float_model, accuracy_budget=0.0)
    message = str(failure.value)
    assert "int8_accuracy" in message and "for this given INT8 model" in message and "--fallback" in message
    assert "try calibration" not in message
    assert not (tmp_path / "out" / contract.INT8_ONNX_MODIFIED).exists()


def test_a_qat_fallback_whose_float_weights_miss_says_so(tmp_path, noise_qat):
    # QAT on noise labels moved the weights: even every layer in float (the float twin) misses FP32's own labels,
    # so no fallback can help and the sentence says why, instead of suggesting QAT to a QAT model
    fp32, run = noise_qat
    images, labels = labelled(fp32, 1, seed=7, size=64)
    with pytest.raises(CheckFailed) as info:
        quantize_to_tensorrt(fp32, calibration(), tmp_path / "out", images=images, labels=torch.cat(labels), fast=None,
                             int8=run.int8, float_twin=run.float_model, accuracy_budget=0.0,
                             holdout=labelled(fp32, 1, seed=8, size=64), fallback=True)
    sentence = str(info.value)
    assert info.value.check.name == "fallback_holdout_accuracy"
    assert "with every layer in float it scores" in sentence and "the float weights themselves" in sentence
    assert not (tmp_path / "out" / contract.INT8_ONNX_FALLBACK).exists()


def test_float_twin_without_int8_is_refused(tmp_path):
    fp32 = variance_preserving_init(QatTiny()).eval()
    with pytest.raises(PipelineError, match="float_twin is the float model an int8= model was converted from"):
        quantize_to_tensorrt(fp32, calibration(), tmp_path / "out", float_twin=fp32)
    assert not (tmp_path / "out").exists()


def test_int8_must_be_a_converted_model(tmp_path):
    from eager2trt.eager import qat

    fp32 = QatTiny().eval()
    with pytest.raises(PipelineError, match=r"int8 \(QatTiny\) has no quantized modules"):
        quantize_to_tensorrt(fp32, calibration(), tmp_path, int8=fp32)
    with pytest.raises(PipelineError, match="int8 still holds FakeQuantize or observer modules"):
        quantize_to_tensorrt(fp32, calibration(), tmp_path, int8=qat.prepare(fp32))
    with pytest.raises(PipelineError, match="int8 is a str"):
        quantize_to_tensorrt(fp32, calibration(), tmp_path, int8="model.pt")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- the main job's flags

def test_job_gives_fallback_a_holdout_for_any_calibration():
    from eager2trt.eager.train import Recipe
    from eager2trt.jobs import JobOptions, calibration_data

    train = noise_split(256, 0)
    opts = JobOptions(quantization=QuantizeConfig(calibration="minmax"), calib_batches=2, holdout_images=64,
                      recipe=Recipe(batch_size=32))
    assert calibration_data(train, opts)[1] is None
    opts.fallback = True
    calib, (held, ys) = calibration_data(train, opts)
    assert sum(len(x) for x in calib) == 64 and sum(len(x) for x in held) == 64 == sum(len(y) for y in ys)


def test_resnet_torch_refuses_qat_epochs_below_one(tmp_path, capsys):
    proc = run_script(ROOT / "resnet_torch.py", "--output-dir", tmp_path / "out", "--qat-epochs", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "error: --qat-epochs must be positive, got 0" in err[0], proc.stderr
    from eager2trt.cli import quantize  # -1 in-process through the entry point's own error path

    args = quantize.get_args_parser().parse_args(["--output-dir", str(tmp_path / "out"), "--qat-epochs", "-1"])
    with pytest.raises(SystemExit) as exit_info:
        quantize.run_cli(lambda: quantize.main(args))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "--qat-epochs must be positive, got -1" in err
    assert not (tmp_path / "out").exists()


def test_resnet_torch_help_lists_fallback_and_qat():
    from eager2trt.cli import quantize

    text = " ".join(quantize.get_args_parser().format_help().split())
    assert "--fallback" in text and "--qat-epochs" in text and "the method auto chooses for PTQ" in text
    args = quantize.get_args_parser().parse_args(["--fallback", "--qat-epochs", "2", "--checkpoint", "x.pt"])
    opts = quantize.options(args)
    assert opts.fallback and opts.qat_epochs == 2


def test_qat_starts_from_the_calibration_auto_chooses_for_ptq():
    # auto chooses among converted PTQ models; QAT takes that choice (one PTQ pass) so that its ranges start
    # where PTQ is best on the held-out images; an explicit method is taken as given, without a PTQ pass
    from eager2trt.eager.calibration import AUTO_METHODS, calibrate, choose_calibration
    from eager2trt.eager.model import fuse
    from eager2trt.eager.quantize import prepare_for
    from eager2trt.jobs import qat_method

    torch.manual_seed(0)
    model = tiny_model()
    holdout = labelled(model, 1, seed=8)
    method = qat_method(model, calibration(), holdout, QuantizeConfig(calibration="auto"))
    prepared = prepare_for(fuse(model, SHAPE)[0], calibration="auto")
    calibrate(prepared, calibration())
    assert method in AUTO_METHODS and method == choose_calibration(prepared, *holdout)[0]
    assert qat_method(None, [], None, QuantizeConfig(calibration="entropy")) == "entropy"


def test_a_fast_graph_below_pytorch_int8_does_not_stop_the_fallback(tmp_path):
    """Issue 26: the fast graph (FP32 biases, another function than PyTorch INT8) scores 2 of 256 images below
    PyTorch INT8 here, which the old fixed 0.1-point bound refused before any fallback was tried. Now that
    comparison is recorded (policy RECORD), the fallback runs and its graph is held to FP32 within the budget."""
    torch.set_num_threads(1)
    model = tiny_model()
    images, labels = labelled(model, 2, seed=14)
    result = quantize_to_tensorrt(model, calibration(), tmp_path, QuantizeConfig(calibration="minmax"), images=images,
                                  labels=torch.cat(labels), fast="fp32", accuracy_budget=5.0,
                                  holdout=labelled(model, 2, seed=8), fallback=True)
    recorded = result.check("fast_accuracy")
    assert recorded.passed and recorded.bound == "recorded"
    assert recorded.figures["difference"] < -0.001  # more than 0.1 point below PyTorch INT8
    assert result.accuracy["fast"] < result.accuracy["exact"] - 0.001  # the same, measured on the exact graph
    assert result.check("fast_error_ratio").passed  # the placement's own defect check
    assert result.failure is None and result.graphs["fallback"].path.exists()
    assert result.accuracy["fallback"] >= result.accuracy["fp32"] - 0.05
    assert any("fast_graph_accuracy failed (recorded)" in n and "fallback graph" in n for n in result.notes)


def test_a_failed_run_reports_the_graphs_on_disk_and_keeps_them(tmp_path):
    """Without fallback a budget miss fails the run after the graphs that passed their defect checks are written;
    the sentence says which are on disk, and the folder is complete (not marked interrupted)."""
    from eager2trt.artifacts import RUN_MARKER, check_complete

    torch.set_num_threads(1)
    model = tiny_model()
    images, labels = labelled(model, 1, seed=7, size=64)
    with pytest.raises(CheckFailed) as info:
        quantize_to_tensorrt(model, calibration(), tmp_path, QuantizeConfig(calibration="minmax"), images=images,
                             labels=torch.cat(labels), fast="fp32", accuracy_budget=5.0)
    sentence, result = str(info.value), info.value.result
    assert info.value.check.name == "int8_accuracy" and "\n" not in sentence
    assert "fallback=True" in sentence and sentence.endswith("no TensorRT-ready graph was written")
    assert result.graphs["exact"].path is None and not (tmp_path / contract.INT8_ONNX_MODIFIED).exists()
    assert (tmp_path / contract.INT8_ONNX).exists() and not (tmp_path / RUN_MARKER).exists()
    check_complete(tmp_path)  # a finished run, not an interrupted one


def test_a_fast_graph_defect_advises_the_exact_graph_only_where_it_is_within_the_budget():
    """Issue 26: advice names only graphs that would pass (hand-made graphs and checks; no model runs)."""
    from eager2trt.checks.compare import error_ratio
    from eager2trt.checks.tally import Stats
    from eager2trt.pipeline import Graph, PipelineResult, _advised
    import numpy as np

    fp32 = np.zeros((4, 2))
    defect = error_ratio(Stats.of(np.ones((4, 2)), fp32), Stats.of(3 * np.ones((4, 2)), fp32))  # fast 3x further
    assert not defect.passed and defect.fix == "use the exact graph for this model"

    def result(exact_within: bool) -> PipelineResult:
        exact = Graph("exact", model=object(), checks=[Check("exact_graph_accuracy", 0.9, ">= 0.8", exact_within)])
        return PipelineResult(None, None, None, None, "qnnpack", {"exact": exact}, [], {})

    assert _advised(defect, result(True)).fix == "use the exact graph for this model"
    fix = _advised(defect, result(False)).fix
    assert "exact graph" in fix and "outside the accuracy budget too" in fix and "fallback=True" in fix
