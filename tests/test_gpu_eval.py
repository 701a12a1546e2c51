"""Evaluation beside a GPU (issue 24): the Q/DQ graphs run by PyTorch with onnxruntime's arithmetic
(runtime/torch_graph.py), PyTorch INT8 and the onnxruntime graphs on a CPU sample, check gpu_vs_cpu.

This machine has no GPU, so the tests marked `anywhere` run the same code path with the PyTorch graphs on the
CPU device ("cpu:0" stands in for "cuda": no part of the pipeline is replaced, only where torch puts tensors).
The tests marked `cuda` run it on a real GPU and skip here."""

import numpy as np
import onnx
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from eager2trt import pipeline
from eager2trt.checks import compare
from eager2trt.checks.tally import Stats
from eager2trt.errors import PipelineError
from eager2trt.runtime.backends import OnnxRunner, run_together
from eager2trt.runtime.torch_graph import TorchGraphRunner
from tests import zoo
from tests.test_streaming import labelled

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
DEVICES = ["cpu:0", pytest.param("cuda", marks=cuda)]


@pytest.fixture
def device_path(monkeypatch, request):
    """The device the GPU path runs on: cpu:0 stands in for a GPU here (the check of resolve_device skipped)."""
    if request.param == "cpu:0":
        monkeypatch.setattr(pipeline, "resolve_device", lambda device, *words: "cpu:0")
    return request.param


@pytest.mark.parametrize("name", ["vgg_relu6", "unet_convtranspose", "detector_two_outputs", "two_inputs"])
def test_every_zoo_graph_runs_in_pytorch_as_in_onnxruntime(name, tmp_path):
    """The export and both TensorRT-ready graphs, in PyTorch on the CPU, give onnxruntime's outputs (Q/DQ as
    written) to float32 rounding: the arithmetic the GPU path runs is the CPU check's."""
    result = pipeline.quantize_to_tensorrt(zoo.build(name), zoo.calibration(name), tmp_path)
    batch = zoo.calibration(name, seed=7)[0]
    export = onnx.load(str(result.paths.int8_onnx))  # the exporter's Constant/ConstantOfShape/Cast chains too
    for graph in [export, result.graphs["exact"].model, result.graphs["fast"].model]:
        for a, b in zip(OnnxRunner(graph).outputs(batch), TorchGraphRunner(graph, "cpu").outputs(batch)):
            assert a.shape == b.shape and np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(a).max())


@pytest.mark.parametrize("device_path", DEVICES, indirect=True)
def test_int8_and_the_cpu_graphs_run_on_a_sample_and_the_gpu_is_held_to_the_cpu(device_path, tmp_path):
    model, calib = zoo.build("hardswish"), zoo.calibration("hardswish", batches=4, batch=8)
    x, y = labelled("hardswish", n=64)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    result = pipeline.quantize_to_tensorrt(model, calib, tmp_path, data=loader, device="cuda", sample=20)
    real = result.tallies["real"]
    assert result.device == device_path and result.int8_samples == 32  # 20 samples: two whole batches of 16
    assert real.seen["int8"] == real.seen["exact_cpu"] == 32 and real.seen["fp32"] == real.seen["exact"] == 64
    gpu = [c for c in result.checks if c.name == "gpu_vs_cpu"]
    assert len(gpu) == 2 and all(c.passed and c.figures["samples"] == 32 for c in gpu)
    guard = result.check("int8_accuracy")
    assert guard.figures["fp32_accuracy"] == real.sample.scores["fp32"].accuracy  # FP32 on the same 32 samples
    assert "first 32 of 64 samples" in guard.detail and result.accuracy["fp32"] == 1.0
    assert next(model.parameters()).device.type == "cpu"  # the caller's model is not moved


def test_the_sampled_runners_stop_after_the_sample_and_the_sample_is_tallied_apart():
    ones = type("Ones", (), {"outputs": lambda self, b: [np.ones((len(b), 3), np.float32)]})()
    data = [(torch.zeros(5, 1), None) for _ in range(4)]
    tally = run_together({"a": ones, "b": ones}, data, [("a", "b")], sampled=("b",), sample=6)
    assert tally.seen == {"a": 20, "b": 10} and tally.sample.samples == 10 and tally.samples == 20
    assert tally.pair("a", "b")[0].samples == 10 and tally.same_samples is tally.sample


def test_gpu_vs_cpu_bound_scales_with_the_int8_error():
    ref = np.ones((4, 10), np.float32)
    cpu, near, far = ref * 1.1, ref * 1.1 + 1e-4, ref * 0.9  # INT8 error 10%; far: further from the CPU than from FP32
    assert compare.gpu_matches_cpu(Stats.of(near, cpu), Stats.of(near, ref)).passed
    failed = compare.gpu_matches_cpu(Stats.of(far, cpu), Stats.of(far, ref))
    assert not failed.passed and "--device cpu" in failed.fix


def test_a_device_that_is_not_there_is_one_sentence(tmp_path):
    model, calib = zoo.build("hardswish"), zoo.calibration("hardswish")
    with pytest.raises(PipelineError, match="pass cpu, cuda"):
        pipeline.quantize_to_tensorrt(model, calib, tmp_path, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError, match="sees no CUDA GPU here; pass cpu"):
            pipeline.quantize_to_tensorrt(model, calib, tmp_path, device="cuda")
    with pytest.raises(PipelineError, match="sample is 0"):
        pipeline.quantize_to_tensorrt(model, calib, tmp_path, sample=0)
