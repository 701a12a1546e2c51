"""TensorRT: real build + evaluation where tensorrt imports and a GPU is present (the Docker image);
elsewhere the real tests skip, and a few tests drive our runtime wrapper with a stand-in tensorrt
module, because the real one cannot be installed on these machines."""

import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from conftest import ROOT
from eager2trt.errors import PipelineError

try:
    import tensorrt  # noqa: F401
    HAVE_TRT = torch.cuda.is_available() and shutil.which("trtexec") is not None
except ImportError:
    HAVE_TRT = False
needs_trt = pytest.mark.skipif(not HAVE_TRT, reason="TensorRT, trtexec and a CUDA GPU are needed (run in the Docker image)")


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """A random-weight ResNet18 through our pipeline and scripts/build_engines.sh, batch 1..8."""
    from eager2trt.export import export_onnx
    from eager2trt.model import build_model, fuse, quantize
    from eager2trt.onnx_utils import load_onnx
    from eager2trt.surgery import make_tensorrt_ready

    out = tmp_path_factory.mktemp("trt")
    fp32 = build_model().eval()
    export_onnx(fp32, out / "resnet_cifar10.onnx")
    int8 = quantize(fuse(fp32)[0], [torch.randn(8, 3, 32, 32) for _ in range(2)])
    export_onnx(int8, out / "raw.onnx")
    import onnx
    onnx.save(make_tensorrt_ready(load_onnx(out / "raw.onnx"))[0], str(out / "resnet_quantized_cifar10_modified.onnx"))
    env = {**os.environ, "OUTPUT_DIR": str(out), "PYTHON": sys.executable, "MIN_SHAPES": "input:1x3x32x32",
           "OPT_SHAPES": "input:4x3x32x32", "MAX_SHAPES": "input:8x3x32x32"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_engines.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, fp32


@needs_trt
def test_engines_run_and_agree_with_onnxruntime(engines):
    from eager2trt.tensorrt_runtime import Engine
    from eager2trt.verify import ort_session

    out, fp32 = engines
    x = torch.randn(8, 3, 32, 32)
    for name, onnx_name in (("int8", "resnet_quantized_cifar10_modified.onnx"), ("fp16", "resnet_cifar10.onnx")):
        engine = Engine(out / f"resnet_cifar10_{name}.engine")
        assert engine.batch_range() == (1, 8)
        got = engine(x.cuda()).cpu().numpy()
        ref = ort_session(out / onnx_name).run(None, {"input": x.numpy()})[0]
        cos = (got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref)
        assert got.shape == (8, 10) and cos > 0.99, (name, cos)
        with pytest.raises(PipelineError, match="outside the engine's profile"):
            engine(torch.randn(9, 3, 32, 32).cuda())
        assert {r["name"] for r in engine.describe()} == {"input", "output"}


@needs_trt
def test_corrupt_engine_is_refused(tmp_path):
    from eager2trt.tensorrt_runtime import Engine

    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"\x00" * 4096)
    with pytest.raises(PipelineError, match="could not deserialize"):
        Engine(bad)


def fake_tensorrt(deserialized):
    """A stand-in for the tensorrt module (mock: TensorRT cannot be installed on these machines)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99-fake"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return deserialized

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt


@pytest.mark.parametrize("gpu,message", [
    (True, "10.99-fake could not deserialize .*another TensorRT version"),  # deserialize returns None
    (False, "need an NVIDIA GPU"),
])
def test_wrapper_explains_unusable_engines(gpu, message, tmp_path, monkeypatch):
    from eager2trt.tensorrt_runtime import Engine

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(deserialized=None))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    engine = tmp_path / "old.engine"
    engine.write_bytes(b"serialized by another version")
    with pytest.raises(PipelineError, match=message):
        Engine(engine)
    with pytest.raises(PipelineError, match="does not exist"):
        Engine(tmp_path / "missing.engine")
