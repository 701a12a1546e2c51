"""Real CIFAR-10: a brief CPU training run through the whole first stage, and the shipped checkpoint
through the README's main job (quantize, export, surgery, onnxruntime validation).

The brief run checks mechanics only (it learns, it resumes, it writes every artifact): a 3-epoch model sits
at ~40% accuracy with many near-tied logits, so its INT8 fidelity says nothing about the pipeline. Fidelity
bounds are held on the shipped checkpoint (main_job), where they are meaningful.
"""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from eager2trt import contract
from conftest import DATA_DIR, ROOT, run_script
from eager2trt.eager.model import build_model, fuse, load_state_dict
from eager2trt.eager.train import seed_everything, train
from eager2trt.jobs import pytorch_reference
from eager2trt.runtime.backends import OnnxRunner, evaluate

SHIPPED = ROOT / "saved_models" / "resnet_cifar10.pt"


def ort_accuracy(model, split):
    ev = evaluate(OnnxRunner(model), split, progress=False)
    return ev.accuracy, ev.logits


# No accuracy budget on the brief run: its near-tied logits put the exact graph 1.3 points under FP32 on the AMD EPYC
# machine (0.3489 vs 0.3621; within the budget on the Intel ones), a fact about the model, not the pipeline.
BRIEF = ["--data-dir", DATA_DIR, "--epochs", "3", "--milestones", "2", "--train-subset", "5000", "--batch-size", "32",
         "--lr", "0.02", "--calib-batches", "60", "--latency-runs", "20", "--accuracy-budget", "100"]


@pytest.fixture(scope="module")
def brief(cifar10, tmp_path_factory):
    """Epoch 1 trained here, as an interrupted run would leave it (its training state), then the CLI resumes.

    A small batch and lr so that short epochs learn something, and a last epoch at lr/10 so BatchNorm's
    running statistics settle.
    """
    from eager2trt.cli import quantize as resnet_torch

    out = tmp_path_factory.mktemp("brief")
    args = resnet_torch.get_args_parser().parse_args([str(a) for a in BRIEF] + ["--output-dir", str(out)])
    seed_everything(args.seed)
    epoch_one = dataclasses.replace(resnet_torch.options(args).recipe, epochs=1)  # a state of 1 epoch; --epochs 3 extends it
    first = train(build_model(), cifar10["train"], cifar10["test"], epoch_one,
                  state_path=out / "resnet_cifar10.train-state.pt", device=torch.device("cpu"))
    proc = run_script(ROOT / "resnet_torch.py", *BRIEF, "--output-dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "metrics.json").read_text())["pytorch"], proc.stdout, first.epochs[0]


def test_brief_run_resumes_and_learns(brief):
    out, m, stdout, first = brief
    assert f"resuming from {out / 'resnet_cifar10.train-state.pt'} after epoch 1" in stdout
    epochs = m["training"]["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and epochs[0] == first
    assert [e["lr"] for e in epochs] == [0.02, 0.02, pytest.approx(0.002)]  # the schedule continued
    assert epochs[-1]["loss"] < epochs[0]["loss"] and epochs[-1]["test_acc"] > 0.2  # chance is 0.1


def test_brief_run_writes_every_artifact_and_complete_metrics(brief):
    out, m, _, _ = brief
    model = load_state_dict(build_model(), out / "resnet_cifar10.pt", "resnet18")
    for name in ("resnet_cifar10.onnx", "resnet_quantized_cifar10.onnx"):
        model_proto = onnx.load(str(out / name))
        onnx.checker.check_model(model_proto)
        assert model_proto.opset_import[0].version == 16
        assert model_proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    ts = torch.jit.load(str(out / "resnet_quantized_cifar10.pt"))
    assert ts(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    assert (out / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((out / "training_curve.json").read_text())["epochs"]) == len(m["training"]["epochs"])
    for key in ("fp32_cpu_1t", "int8_cpu_1t", "int8_torchscript_cpu_1t"):
        assert m["latency_batch1_ms"][key] > 0
    assert {"torch", "quantized_engine", "cpu", "threads"} <= set(m["environment"])
    assert m["seed"] == 0 and not (out / "resnet_cifar10.train-state.pt").exists()
    assert model.fc.out_features == 10


def test_brief_fused_equals_unfused(brief):
    out, _, _, _ = brief
    _, max_abs = fuse(load_state_dict(build_model(), out / "resnet_cifar10.pt", "resnet18"), (3, 32, 32))
    assert max_abs < 1e-3


def test_brief_onnx_runs_in_onnxruntime(brief, cifar10):
    out, _, _, _ = brief
    for name in ("resnet_cifar10.onnx", "resnet_quantized_cifar10.onnx"):
        acc, logits = ort_accuracy(out / name, cifar10["test"])
        assert logits.shape == (10_000, 10) and np.isfinite(logits).all()
        assert acc > 0.15, (name, acc)  # above chance: a wrong scale or zero point would give ~0.1


@pytest.fixture(scope="module")
def main_job(cifar10, tmp_path_factory):
    out = tmp_path_factory.mktemp("main")
    env = {**os.environ, "OUTPUT_DIR": str(out), "CHECKPOINT": str(SHIPPED), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "run_pipeline.sh"), str(DATA_DIR)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, json.loads((out / "metrics.json").read_text()), proc.stdout


def test_shipped_checkpoint_accuracy(main_job):
    _, metrics, _ = main_job
    m = metrics["pytorch"]
    assert m["fp32_accuracy"] >= 0.865, m["fp32_accuracy"]
    assert m["fp32_accuracy"] - m["int8_accuracy"] <= 0.003, (m["fp32_accuracy"], m["int8_accuracy"])


def test_shipped_surgery_passes_lint_and_is_exact_on_real_images(main_job):
    _, metrics, stdout = main_job
    checks = metrics["onnx_gs"]["checks"]
    assert all(c["passed"] for c in checks.values()) and sum(k.startswith("lint.") for k in checks) >= 6
    eq = checks["equivalence"]["figures"]
    assert eq["samples"] == 10_032 and eq["max_abs_diff"] <= contract.EQUIVALENCE_ATOL and eq["argmax_agreement"] == 1.0
    assert metrics["onnx_gs_fast"]["performance"]["fusable_residual_adds"] == 8
    assert metrics["onnx_gs_fast"]["accuracy"] >= metrics["pytorch"]["int8_accuracy"] - contract.FAST_ACCURACY_DROP["fp32"]
    assert "FAIL" not in stdout


def test_shipped_onnx_int8_matches_pytorch_int8(main_job, cifar10):
    out, metrics, _ = main_job
    val = metrics["validation"]["resnet_quantized_cifar10_modified.onnx"]
    assert abs(val["accuracy"] - metrics["pytorch"]["int8_accuracy"]) <= contract.ACCURACY_MATCH
    runner, _ = pytorch_reference(out / "resnet_quantized_cifar10.pt")  # on the faithful engine
    pt = evaluate(runner, cifar10["test"], progress=False).logits
    _, logits = ort_accuracy(out / "resnet_quantized_cifar10_modified.onnx", cifar10["test"])
    assert (logits.argmax(1) == pt.argmax(1)).mean() >= contract.AGREEMENT_MIN


def test_shipped_fp16_onnx_within_a_tenth_of_a_point(main_job, cifar10):
    out, metrics, _ = main_job
    fp16 = onnx.load(str(out / "resnet_cifar10_fp16.onnx"))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O kept
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    acc16, _ = ort_accuracy(fp16, cifar10["test"])
    acc32, _ = ort_accuracy(out / "resnet_cifar10.onnx", cifar10["test"])
    assert abs(acc16 - acc32) <= contract.FP16_ACCURACY_TOLERANCE and np.isclose(acc32, metrics["pytorch"]["fp32_accuracy"], atol=0.002)


def test_onnx_validation_benchmark_summary(main_job):
    out, _, _ = main_job
    proc = run_script(ROOT / "resnet_tensorrt.py", "--onnx", out / "resnet_quantized_cifar10_modified.onnx",
                      "--data-dir", DATA_DIR, "--metrics", out / "metrics.json", "--benchmark", "--runs", "30")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PASS accuracy" in proc.stdout and "percentile(99%)" in proc.stdout
    bench = json.loads((out / "benchmark_onnxruntime_resnet_quantized_cifar10_modified.json").read_text())
    assert bench["runs"] == 30 and bench["min_ms"] <= bench["median_ms"] <= bench["p99_ms"] <= bench["max_ms"]
