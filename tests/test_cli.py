"""Bad input through the real command-line entry points: one sentence, non-zero exit, nothing half-written."""

import os

import onnx
import pytest

from conftest import ROOT, run_script, skip_if_installed
from qdq_graphs import conv_graph, fp32_graph


def assert_one_sentence(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ")
    for f in fragments:
        assert f in err, err


@pytest.mark.parametrize("flags,fragment", [
    (["--epochs", "-1"], "--epochs must be 0 or more"),
    (["--arch", "vgg11"], "choose one of resnet18, resnet50"),
    (["--activation-dtype", "int4"], "choose one of quint8, qint8"),
    (["--calibration", "kl"], "choose one of minmax, histogram, percentile, entropy, mse"),
    (["--checkpoint", "missing.pt"], "checkpoint missing.pt does not exist"),
    (["--engine", "tpu"], "unknown --engine 'tpu'; choose one of"),
    (["--save-every", "0"], "--save-every must be positive"),
    (["--train-subset", "0"], "--train-subset must be positive"),
    (["--calib-batches", "-1"], "--calib-batches must be 0 or more"),
    (["--epochs", "0"], "--epochs 0 would save an untrained model; pass --epochs 1 or more, or --checkpoint"),
    (["--batch-size", "0"], "--batch-size must be positive, got 0"),
    (["--batch-size", "-1"], "--batch-size must be positive, got -1"),
    (["--lr", "nan"], "--lr must be a finite number, positive, got nan"),
    (["--lr", "0"], "--lr must be a finite number, positive, got 0.0"),
    (["--lr", "inf"], "--lr must be a finite number, positive, got inf"),
    (["--momentum", "-0.5"], "--momentum must be a finite number, 0 or more, got -0.5"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number, 0 or more, got nan"),
    (["--milestones", "100", "0"], "--milestones must be positive, got 0"),
    (["--seed", "-1"], "--seed must be between 0 and 4294967295, got -1"),
    (["--latency-runs", "0"], "--latency-runs must be positive, got 0"),
])
def test_resnet_torch_rejects_bad_options(flags, fragment, tmp_path):
    proc = run_script(ROOT / "resnet_torch.py", "--output-dir", tmp_path / "out", *flags, cwd=tmp_path)
    assert_one_sentence(proc, fragment)


def test_resnet_torch_keeps_an_existing_checkpoint(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "resnet_cifar10.pt").write_bytes(b"valuable weights")
    proc = run_script(ROOT / "resnet_torch.py", "--output-dir", out, "--data-dir", tmp_path / "nodata", "--epochs", "1")
    assert_one_sentence(proc, f"{out / 'resnet_cifar10.pt'} already exists and this run would replace it; pass "
                              f"--overwrite to replace it")
    assert (out / "resnet_cifar10.pt").read_bytes() == b"valuable weights"
    # --overwrite lifts the guard: the run goes on to the next check (here: no data)
    proc = run_script(ROOT / "resnet_torch.py", "--output-dir", out, "--data-dir", tmp_path / "nodata", "--epochs", "1",
                      "--overwrite")
    assert_one_sentence(proc, "no CIFAR-10 found")


def test_resnet_torch_mismatched_class_folders(tmp_path):
    from test_data import make_image_folder

    make_image_folder(tmp_path / "data")
    (tmp_path / "data" / "test" / "class00").rename(tmp_path / "data" / "test" / "plane")
    proc = run_script(ROOT / "resnet_torch.py", "--data-dir", tmp_path / "data", "--output-dir", tmp_path / "out",
                      "--checkpoint", ROOT / "saved_models" / "resnet_cifar10.pt")
    assert_one_sentence(proc, "only in train: class00; only in test: plane")


def test_resnet_torch_missing_data(tmp_path):
    proc = run_script(ROOT / "resnet_torch.py", "--data-dir", tmp_path / "nodata", "--output-dir", tmp_path / "out")
    assert_one_sentence(proc, "no CIFAR-10 found", "cifar-10-batches-py")
    assert not any((tmp_path / "out").glob("*.onnx"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_resnet_torch_unwritable_output(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    proc = run_script(ROOT / "resnet_torch.py", "--output-dir", ro / "out")
    assert_one_sentence(proc, "not writable")


def test_resnet_torch_output_path_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_script(ROOT / "resnet_torch.py", "--output-dir", blocker / "out")
    assert_one_sentence(proc, "not writable")


def test_resnet_torch_wrong_checkpoint(tmp_path):
    import torch

    from eager2trt.eager.model import build_model

    ckpt = tmp_path / "r50.pt"
    torch.save(build_model("resnet18", num_classes=100).state_dict(), ckpt)
    data = ROOT.parent / "shared" / "cifar10"
    proc = run_script(ROOT / "resnet_torch.py", "--checkpoint", ckpt, "--data-dir", os.environ.get("CIFAR10_DIR", data),
                      "--output-dir", tmp_path / "out")
    assert_one_sentence(proc, "does not fit resnet18 with 10 classes")
    assert not (tmp_path / "out" / "resnet_quantized_cifar10.onnx").exists()


def test_onnx_gs_bad_inputs(tmp_path):
    out = tmp_path / "out.onnx"
    assert_one_sentence(run_script(ROOT / "onnx_gs.py", "--input", tmp_path / "none.onnx", "--output", out),
                        "does not exist")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01garbage" * 50)
    assert_one_sentence(run_script(ROOT / "onnx_gs.py", "--input", junk, "--output", out), "not a valid ONNX model")
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(fp32_graph(), str(fp32))
    assert_one_sentence(run_script(ROOT / "onnx_gs.py", "--input", fp32, "--output", out), "nothing to quantize")
    import numpy as np

    asym = tmp_path / "asym.onnx"
    onnx.save(conv_graph(act_zp=np.uint8(100)), str(asym))
    assert_one_sentence(run_script(ROOT / "onnx_gs.py", "--input", asym, "--output", out),
                        "symmetric quantization only", "quant (QuantizeLinear")
    assert not out.exists() and not list(tmp_path.glob(".out.onnx*"))
    good = tmp_path / "good.onnx"
    onnx.save(conv_graph(), str(good))
    (tmp_path / "blocker").write_text("a file where a folder should be")
    proc = run_script(ROOT / "onnx_gs.py", "--input", good, "--output", tmp_path / "blocker" / "o.onnx")
    assert_one_sentence(proc, "not writable", "pass a writable --output")
    assert "--output-dir" not in proc.stderr  # onnx_gs.py has no such flag
    for atol, shown in (("nan", "nan"), ("-1", "-1.0")):
        assert_one_sentence(run_script(ROOT / "onnx_gs.py", "--input", good, "--output", out, "--atol", atol),
                            f"--atol must be a finite number, 0 or more, got {shown}")


def test_onnx_gs_writes_verified_output(tmp_path):
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(conv_graph(), str(src))
    proc = run_script(ROOT / "onnx_gs.py", "--input", src, "--output", out, "--metrics", tmp_path / "m.json")
    assert proc.returncode == 0, proc.stderr
    assert "PASS lint.zero_points_int8_zero" in proc.stdout and "PASS equivalence: 0 (bound <= 1e-05)" in proc.stdout
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_resnet_tensorrt_without_tensorrt_says_so(tmp_path):
    skip_if_installed("tensorrt")
    proc = run_script(ROOT / "resnet_tensorrt.py", "--engine", tmp_path / "x.engine")
    assert_one_sentence(proc, "TensorRT is not installed", "--onnx")


def test_resnet_tensorrt_bad_onnx_and_batch(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"nope" * 10)
    assert_one_sentence(run_script(ROOT / "resnet_tensorrt.py", "--onnx", junk), "not a valid ONNX model")
    assert_one_sentence(run_script(ROOT / "resnet_tensorrt.py", "--onnx", junk, "--batch-size", "0"),
                        "--batch-size must be positive")
    metrics = ["--metrics", tmp_path / "m.json"]
    # checked before the model is loaded and the 10,000 test images are evaluated
    assert_one_sentence(run_script(ROOT / "resnet_tensorrt.py", "--onnx", junk, "--benchmark", "--runs", "0", *metrics),
                        "--runs must be positive, got 0")
    assert_one_sentence(run_script(ROOT / "resnet_tensorrt.py", "--onnx", junk, "--benchmark-batch", "0", *metrics),
                        "--benchmark-batch must be positive, got 0")


@pytest.mark.parametrize("flags,fragment", [
    (["--batch-sizes", "1", "0"], "--batch-sizes must be positive, got 0"),
    (["--runs", "0"], "--runs must be positive, got 0"),
])
def test_latency_benchmark_rejects_bad_options(flags, fragment, tmp_path):
    proc = run_script(ROOT / "bench" / "latency.py", "--output-dir", tmp_path, "--checkpoint",
                      ROOT / "saved_models" / "resnet_cifar10.pt", *flags)
    assert_one_sentence(proc, fragment)
    assert not (tmp_path / "benchmark.json").exists()


def test_latency_benchmark_wrong_checkpoint_names_real_flags(tmp_path):
    import torch

    from eager2trt.eager.model import build_model

    ckpt = tmp_path / "r18_100.pt"
    torch.save(build_model("resnet18", num_classes=100).state_dict(), ckpt)
    proc = run_script(ROOT / "bench" / "latency.py", "--output-dir", tmp_path, "--checkpoint", ckpt)
    assert_one_sentence(proc, "does not fit resnet18 with 10 classes", "pass --arch and a checkpoint that match")
    assert "--arch" in run_script(ROOT / "bench" / "latency.py", "--help").stdout  # the flag the sentence names exists


@pytest.mark.parametrize("flags,fragment", [
    (["--variants", "eager", "bogus"], "unknown --variants 'bogus'; choose one of reference, eager, compile, "
                                       "reduce-overhead"),
    (["--steps", "0"], "--steps must be positive, got 0"),
    (["--warmup", "-1"], "--warmup must be 0 or more, got -1"),
    (["--workers", "-1"], "--workers must be 0 or more, got -1"),
])
def test_train_speed_rejects_bad_options_before_looking_for_a_gpu(flags, fragment, tmp_path):
    assert_one_sentence(run_script(ROOT / "bench" / "train_speed.py", "--output-dir", tmp_path, *flags), fragment)


def test_fp16_refuses_a_qdq_model(tmp_path):
    src, out = tmp_path / "qdq.onnx", tmp_path / "fp16.onnx"
    onnx.save(conv_graph(), str(src))
    proc = run_script("-m", "eager2trt.cli.fp16", "--input", src, "--output", out)
    assert_one_sentence(proc, f"{src} is a quantized model (", "FP16 conversion takes the FP32 ONNX")
    assert not out.exists()


def test_fp16_writes_a_checked_model(tmp_path):
    src, out = tmp_path / "fp32.onnx", tmp_path / "fp16.onnx"
    onnx.save(fp32_graph(), str(src))
    proc = run_script("-m", "eager2trt.cli.fp16", "--input", src, "--output", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_build_engines_without_trtexec(tmp_path):
    import shutil
    import subprocess

    if shutil.which("trtexec"):
        pytest.skip("trtexec is installed here")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_engines.sh")], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2 and "trtexec is not on PATH" in proc.stderr


def test_every_cli_has_help():
    for script in ("resnet_torch.py", "onnx_gs.py", "resnet_tensorrt.py", "bench/train_speed.py", "bench/latency.py"):
        proc = run_script(ROOT / script, "--help")
        assert proc.returncode == 0 and "usage:" in proc.stdout and "(default:" in proc.stdout, script


def test_resnet_tensorrt_without_a_pytorch_record_fails_in_one_sentence(tmp_path):
    from eager2trt.reports import metrics

    m = tmp_path / "metrics.json"
    metrics.update(m, "onnx_gs", {"note": "no pytorch section"})
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(fp32_graph(), str(fp32))
    proc = run_script(ROOT / "resnet_tensorrt.py", "--onnx", fp32, "--metrics", m, "--data-dir", tmp_path)
    assert_one_sentence(proc, f"{m} has no pytorch.fp32_accuracy", "run python resnet_torch.py")
    proc = run_script(ROOT / "resnet_tensorrt.py", "--onnx", fp32, "--metrics", tmp_path / "none.json")
    assert_one_sentence(proc, "does not exist or is empty")


@pytest.mark.parametrize("module", ["eager2trt.cli.quantize", "eager2trt.cli.surgery", "eager2trt.cli.validate",
                                    "eager2trt.cli.fp16", "eager2trt.cli.layer_info", "bench.latency", "bench.train_speed",
                                    "bench.anchors", "bench.engines", "bench.main_job", "bench.generality"])
def test_every_flag_shows_its_default_in_help(module):
    """ArgumentDefaultsHelpFormatter adds '(default: X)' only to flags that have help text."""
    import argparse
    import importlib

    parser = importlib.import_module(module).get_args_parser()
    assert isinstance(parser.formatter_class, type) and issubclass(parser.formatter_class,
                                                                   argparse.ArgumentDefaultsHelpFormatter)
    missing = [a.option_strings[0] for a in parser._actions if a.option_strings and a.help is None]
    assert not missing, f"{module}: flags without help text (their default is not shown): {missing}"
