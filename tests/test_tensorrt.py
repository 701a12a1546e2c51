"""TensorRT: real build + evaluation where tensorrt imports, trtexec exists and a GPU is present (the Docker
image); elsewhere the real tests skip, or fail where EAGER2TRT_REQUIRE_TENSORRT=1 (set in the image). Other
tests drive our runtime wrapper with a stand-in tensorrt module and scripts/build_engines.sh with a stand-in
trtexec script (mocks: TensorRT cannot be installed on these machines), and parse hand-made layer-info samples
(tests/data/README.md says where their format comes from)."""

import ctypes
import enum
import json
import os
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from conftest import ROOT
from eager2trt.errors import PipelineError

TRTEXEC_DIRS = ("/opt/tensorrt/bin", "/usr/src/tensorrt/bin")  # where NGC images put trtexec
DATA = ROOT / "tests" / "data"


def missing_tensorrt_part() -> str | None:
    """What the real TensorRT tests lack here, or None."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt module"
    if not torch.cuda.is_available():
        return "a CUDA GPU"
    if shutil.which("trtexec", path=os.pathsep.join([os.environ.get("PATH", ""), *TRTEXEC_DIRS])) is None:
        return "trtexec"
    return None


@pytest.fixture(scope="session")
def real_tensorrt():
    """Skip without TensorRT, trtexec and a GPU; fail instead where EAGER2TRT_REQUIRE_TENSORRT=1 (the image)."""
    missing = missing_tensorrt_part()
    if missing is not None:
        reason = f"{missing} is missing; the real TensorRT tests need tensorrt, trtexec and a CUDA GPU (Docker image)"
        if os.environ.get("EAGER2TRT_REQUIRE_TENSORRT") == "1":
            pytest.fail(f"EAGER2TRT_REQUIRE_TENSORRT=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def engines(real_tensorrt, tmp_path_factory):
    """A random-weight ResNet18 through our pipeline (exact and fast graphs) and scripts/build_engines.sh."""
    from eager2trt.eager.model import build_model, variance_preserving_init
    from eager2trt.pipeline import quantize_to_tensorrt

    out = tmp_path_factory.mktemp("trt")
    fp32 = variance_preserving_init(build_model()).eval()
    quantize_to_tensorrt(fp32, [torch.randn(8, 3, 32, 32) for _ in range(2)], out, fast="fp32")
    env = {**os.environ, "OUTPUT_DIR": str(out), "PYTHON": sys.executable, "MIN_SHAPES": "input:1x3x32x32",
           "OPT_SHAPES": "input:4x3x32x32", "MAX_SHAPES": "input:8x3x32x32"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_engines.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, fp32


def test_engines_run_and_agree_with_onnxruntime(engines):
    from eager2trt.runtime.tensorrt import Engine
    from eager2trt.runtime.backends import ort_session

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


def test_exact_int8_engine_keeps_the_residual_adds_separate(engines):
    """The fusion claim of issue #9: with Q/DQ on both Add inputs, TensorRT runs each of ResNet18's 8 residual
    Adds as its own pointwise layer (onnx_gs.py --mode fast is what fuses them)."""
    from eager2trt.runtime.layer_info import summarize

    out, _ = engines
    s = summarize(out / "resnet_cifar10_int8_layer_info.json")
    assert (s.pointwise, s.convolutions_with_fused_add) == (8, 0), s


@pytest.mark.usefixtures("real_tensorrt")
def test_corrupt_engine_is_refused(tmp_path):
    from eager2trt.runtime.tensorrt import Engine

    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"\x00" * 4096)
    with pytest.raises(PipelineError, match="could not deserialize"):
        Engine(bad)


class DataType(enum.Enum):
    """tensorrt.DataType's members as TensorRT 10 and 11 name them (str() gives 'DataType.INT64' as in TensorRT)."""

    FLOAT, HALF, INT8, INT32, BOOL, UINT8, FP8, BF16, INT64 = range(9)


class TensorIOMode(enum.Enum):
    INPUT, OUTPUT = 1, 2


class FakeContext:
    """An execution context whose 'engine' returns twice the first 10 input values of each image, read from and
    written to the addresses it was given, and logs the stream it was enqueued on."""

    def __init__(self, log):
        self.log, self.shapes, self.addresses = log, {}, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape

    def get_tensor_shape(self, name):
        return (self.shapes["input"][0], 10)

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def execute_async_v3(self, stream_handle):
        self.log.append(("execute", stream_handle))
        batch, n = self.shapes["input"][0], int(np.prod(self.shapes["input"][1:]))
        x = np.ctypeslib.as_array((ctypes.c_float * (batch * n)).from_address(self.addresses["input"]))
        logits = np.ascontiguousarray(2 * x.reshape(batch, n)[:, :10], dtype=np.float32)
        ctypes.memmove(self.addresses["output"], logits.ctypes.data, logits.nbytes)
        return True


class FakeEngine:
    """An ICudaEngine with one image input (batch 1..8) and one 10-logit output of the given types."""

    num_io_tensors = 2

    def __init__(self, log, input_type=DataType.FLOAT, output_type=DataType.FLOAT, context=FakeContext):
        self.log, self.types, self.context = log, {"input": input_type, "output": output_type}, context

    def get_tensor_name(self, i):
        return ["input", "output"][i]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name == "input" else TensorIOMode.OUTPUT

    def get_tensor_shape(self, name):
        return (-1, 3, 32, 32) if name == "input" else (-1, 10)

    def get_tensor_dtype(self, name):
        return self.types[name]

    def get_tensor_format_desc(self, name):
        return "Row major linear FP32 format (kLINEAR)"

    def get_tensor_profile_shape(self, name, profile):
        return (1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32)

    def create_execution_context(self):
        return self.context(self.log)


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

    trt.Logger, trt.Runtime, trt.TensorIOMode, trt.DataType = Logger, Runtime, TensorIOMode, DataType
    trt.float32, trt.float16, trt.int8, trt.int32, trt.bool = (DataType.FLOAT, DataType.HALF, DataType.INT8,
                                                                DataType.INT32, DataType.BOOL)
    trt.uint8, trt.fp8, trt.bfloat16, trt.int64 = DataType.UINT8, DataType.FP8, DataType.BF16, DataType.INT64
    return trt


class FakeStream:
    """A torch.cuda.Stream stand-in (this machine's torch has no CUDA) that logs which stream waits for which."""

    def __init__(self, handle, log):
        self.cuda_stream, self.log = handle, log

    def wait_stream(self, other):
        self.log.append(("wait", self.cuda_stream, other.cuda_stream))


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """An engine file, the stand-in tensorrt module and stand-in CUDA streams; the caller is on the legacy
    default stream (handle 0), as torch is unless told otherwise."""
    log = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Stream", lambda: FakeStream(0x7E57, log))
    caller = FakeStream(0, log)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: caller)
    path = tmp_path / "fake.engine"
    path.write_bytes(b"serialized")
    return path, log


def test_engine_runs_on_its_own_stream_ordered_against_the_callers(fake_gpu, monkeypatch):
    from eager2trt.runtime.tensorrt import Engine

    path, log = fake_gpu
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(FakeEngine(log)))
    engine = Engine(path)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)  # the runtime converts to the engine's float32
    logits = engine(x)
    # engine stream waits for the caller's (input written), runs (never on handle 0), caller waits for it
    assert log == [("wait", 0x7E57, 0), ("execute", 0x7E57), ("wait", 0, 0x7E57)]
    assert torch.equal(logits, 2 * x.float().flatten(1)[:, :10])  # it read the input and wrote the output given


class CudaBuffer:
    """A raw float32 device address with a shape, viewable by torch.as_tensor (__cuda_array_interface__)."""

    def __init__(self, address, shape):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (address, False), "version": 2}


class GpuFakeContext(FakeContext):
    """FakeContext's arithmetic enqueued with torch on the stream it is given, after a ~0.1 s spin of that
    stream, so that a missing wait between the streams shows as a wrong result."""

    def execute_async_v3(self, stream_handle):
        self.log.append(("execute", stream_handle))
        batch, n = self.shapes["input"][0], int(np.prod(self.shapes["input"][1:]))
        x = torch.as_tensor(CudaBuffer(self.addresses["input"], (batch, n)), device="cuda")
        out = torch.as_tensor(CudaBuffer(self.addresses["output"], (batch, 10)), device="cuda")
        with torch.cuda.stream(torch.cuda.ExternalStream(stream_handle)):
            torch.cuda._sleep(200_000_000)
            out.copy_(2 * x[:, :10])
        return True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for real streams (the stand-in test "
                                                          "above checks the order of waits on any machine)")
def test_engine_stream_order_on_a_real_gpu(tmp_path, monkeypatch):
    from eager2trt.runtime.tensorrt import Engine

    log = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(FakeEngine(log, context=GpuFakeContext)))
    (tmp_path / "fake.engine").write_bytes(b"serialized")
    engine = Engine(tmp_path / "fake.engine")
    x = torch.zeros(4, 3, 32, 32, device="cuda")
    torch.cuda._sleep(200_000_000)  # the caller's stream is still busy when it writes the input
    x.fill_(1.0)
    logits = engine(x)  # read on the caller's stream right away
    assert torch.equal(logits.cpu(), torch.full((4, 10), 2.0))
    assert log == [("execute", engine.stream.cuda_stream)] and engine.stream.cuda_stream != 0
    assert torch.cuda.current_stream().cuda_stream == 0  # the caller stayed on the legacy default stream


@pytest.mark.parametrize("tensor,dtype", [("input", DataType.INT64), ("input", DataType.UINT8),
                                          ("output", DataType.FP8)])
def test_unsupported_io_type_is_a_sentence(tensor, dtype, fake_gpu, monkeypatch):
    from eager2trt.runtime.tensorrt import Engine

    path, log = fake_gpu
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(FakeEngine(log, **{f"{tensor}_type": dtype})))
    with pytest.raises(PipelineError, match=f"engine tensor '{tensor}' has type {dtype}, which this runtime"):
        Engine(path)


def test_latency_benchmark_skips_tensorrt_rows_without_a_gpu(tmp_path, monkeypatch):
    """tensorrt imports on GPU-less machines; the benchmark must say why it has no TensorRT rows, not abort."""
    from bench.latency import tensorrt_rows

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(deserialized=None))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    engines = [tmp_path / f"resnet_cifar10_{n}.engine" for n in ("int8", "int8_fast", "fp16")]
    for e in engines[:2]:
        e.write_bytes(b"serialized")
    rows = tensorrt_rows(engines, [1], runs=5)
    assert [(r["precision"], r["note"]) for r in rows] == [("INT8", "skipped: no CUDA GPU visible"),
                                                          ("INT8 FAST", "skipped: no CUDA GPU visible"),
                                                          ("FP16", "skipped: no CUDA GPU visible")]


@pytest.mark.parametrize("gpu,message", [
    (True, "10.99-fake could not deserialize .*another TensorRT version"),  # deserialize returns None
    (False, "need an NVIDIA GPU"),
])
def test_wrapper_explains_unusable_engines(gpu, message, tmp_path, monkeypatch):
    from eager2trt.runtime.tensorrt import Engine

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(deserialized=None))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    engine = tmp_path / "old.engine"
    engine.write_bytes(b"serialized by another version")
    with pytest.raises(PipelineError, match=message):
        Engine(engine)
    with pytest.raises(PipelineError, match="does not exist"):
        Engine(tmp_path / "missing.engine")
@pytest.mark.parametrize("sample,expected", [
    # exact placement, TensorRT 10 schema: the residual Add and Relu run as their own PWN layer
    ("layer_info_trt10_exact_block.json", dict(schema="TensorRT 10", layers=5, convolutions=2, int8_convolutions=2,
                                               convolutions_with_fused_add=0, pointwise=1)),
    # fast placement, TensorRT 11 schema (I/O Tensors, split tensor type keys): Add and Relu fused into conv2
    ("layer_info_trt11_fast_block.json", dict(schema="TensorRT 11", layers=4, convolutions=2, int8_convolutions=2,
                                              convolutions_with_fused_add=1, pointwise=0)),
])
def test_layer_info_counts_fused_convolutions_and_separate_pointwise_layers(sample, expected):
    from eager2trt.runtime.layer_info import summarize

    s = summarize(DATA / sample)
    assert {k: getattr(s, k) for k in expected} == expected
    assert s.io_tensors == ["input", "output"]
    assert s.pointwise_names == (["PWN(/layer1/layer1.0/Add, /layer1/layer1.0/relu2/Relu)"] if s.pointwise else [])


@pytest.mark.parametrize("content,message", [
    (None, "does not exist; scripts/build_engines.sh writes it"),
    ('{"Layers": [', "is not valid JSON"),
    ('{"Bindings": []}', 'has no "Layers" list'),
    ('{"Layers": ["conv1 + relu1", "PWN(Add, Relu)"]}', "names only; rebuild the engine with --profilingVerbosity"),
])
def test_layer_info_refuses_what_it_cannot_count_in_one_sentence(content, message, tmp_path):
    from eager2trt.runtime.layer_info import summarize

    path = tmp_path / "layer_info.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PipelineError, match=message):
        summarize(path)


def test_layer_info_cli(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "eager2trt.cli.layer_info", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True)

    ok = run(DATA / "layer_info_trt10_exact_block.json", DATA / "layer_info_trt11_fast_block.json")
    assert ok.returncode == 0, ok.stderr
    assert "1 separate pointwise/elementwise layers" in ok.stdout and "0 separate" in ok.stdout
    as_json = json.loads(run("--json", DATA / "layer_info_trt11_fast_block.json").stdout)
    assert as_json[0]["convolutions_with_fused_add"] == 1
    missing = run(tmp_path / "none.json")
    assert missing.returncode == 2 and missing.stderr.startswith("error: layer info") and not missing.stdout
    assert "(default: False)" in run("--help").stdout


# A stand-in for trtexec (TensorRT cannot be installed here): it prints a TensorRT banner as trtexec does, logs
# its arguments one build a line, and writes the engine, layer info and profile it is asked for.
FAKE_TRTEXEC = """#!/usr/bin/env bash
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v$FAKE_TRT_VERSION] # trtexec $*"
[ "$1" = --help ] && exit 0
echo "$*" >> "$FAKE_TRT_LOG"
for arg in "$@"; do
  case $arg in
    --saveEngine=*) echo engine > "${arg#*=}" ;;
    --exportLayerInfo=*) cp "$FAKE_LAYER_INFO" "${arg#*=}" ;;
    --exportProfile=*) echo '[{"count": 1}]' > "${arg#*=}" ;;
  esac
done
echo "[I] Throughput: 1234.5 qps"
"""


def tiny_fp32_onnx(path):
    """A one-Conv float32 model named like ours (input 'input'), enough for eager2trt.cli.fp16 to convert."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["output"])], "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 30, 30])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # onnx's newest IR version is newer than onnxruntime reads
    onnx.save(model, str(path))


def run_build_engines(tmp_path, version, fast=True, fp16_onnx_age=None):
    """scripts/build_engines.sh against the stand-in trtexec; returns the process and the logged builds."""
    out, bin_dir = tmp_path / "out", tmp_path / "bin"
    out.mkdir()
    bin_dir.mkdir()
    (bin_dir / "trtexec").write_text(FAKE_TRTEXEC)
    (bin_dir / "trtexec").chmod(0o755)
    tiny_fp32_onnx(out / "resnet_cifar10.onnx")
    (out / "resnet_quantized_cifar10_modified.onnx").write_bytes(b"exact Q/DQ graph")
    if fast:
        (out / "resnet_quantized_cifar10_fast.onnx").write_bytes(b"fast Q/DQ graph")
    if fp16_onnx_age is not None:  # seconds relative to the FP32 ONNX: negative = older
        fp16, t = out / "resnet_cifar10_fp16.onnx", (out / "resnet_cifar10.onnx").stat().st_mtime
        fp16.write_bytes(b"an FP16 ONNX made earlier")
        os.utime(fp16, (t + fp16_onnx_age, t + fp16_onnx_age))
    sample = "layer_info_trt11_fast_block.json" if version.startswith("11") else "layer_info_trt10_exact_block.json"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OUTPUT_DIR": str(out),
           "PYTHON": sys.executable, "FAKE_TRT_VERSION": version, "FAKE_TRT_LOG": str(tmp_path / "trtexec.log"),
           "FAKE_LAYER_INFO": str(DATA / sample)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_engines.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    builds = (tmp_path / "trtexec.log").read_text().splitlines() if (tmp_path / "trtexec.log").exists() else []
    return proc, {re.search(r"/\.resnet_cifar10_(\w+)\.engine\.\d+\.\w+\.tmp", b).group(1): b.split() for b in builds}


def test_build_engines_tensorrt10_flags(tmp_path):
    proc, builds = run_build_engines(tmp_path, "101300")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(builds) == {"fp16", "int8", "int8_fast"}
    assert builds["fp16"][0].endswith("/resnet_cifar10.onnx") and "--fp16" in builds["fp16"]
    assert "--int8" not in builds["fp16"]
    assert builds["int8"][0].endswith("/resnet_quantized_cifar10_modified.onnx")
    assert builds["int8_fast"][0].endswith("/resnet_quantized_cifar10_fast.onnx")
    for name in ("int8", "int8_fast"):  # non-INT8 layers may run FP16
        assert {"--int8", "--fp16"} <= set(builds[name])
    assert all("--separateProfileRun" in b and "--profilingVerbosity=detailed" in b for b in builds.values())
    for name in ("fp16", "int8", "int8_fast"):
        assert (tmp_path / "out" / f"resnet_cifar10_{name}.engine").read_text() == "engine\n"
    # the fusion summary of each engine, from the layer info trtexec wrote
    assert proc.stdout.count("(TensorRT 10 layer info)") == 3 and "1 separate pointwise/elementwise" in proc.stdout


def test_build_engines_tensorrt11_flags_and_missing_fast_graph(tmp_path):
    proc, builds = run_build_engines(tmp_path, "110100", fast=False, fp16_onnx_age=+10)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(builds) == {"fp16", "int8"}
    assert "resnet_quantized_cifar10_fast.onnx does not exist (onnx_gs.py --mode fast writes it)" in proc.stdout
    assert builds["fp16"][0].endswith("/resnet_cifar10_fp16.onnx")
    for flags in builds.values():  # strongly typed: no precision flags; --separateProfileRun is a no-op in 11
        assert not {"--fp16", "--int8", "--best", "--separateProfileRun"} & set(flags)
    # an FP16 ONNX newer than the FP32 one is reused as it is
    assert (tmp_path / "out" / "resnet_cifar10_fp16.onnx").read_bytes() == b"an FP16 ONNX made earlier"
    assert proc.stdout.count("(TensorRT 11 layer info)") == 2


def test_build_engines_reconverts_an_fp16_onnx_older_than_the_fp32_one(tmp_path):
    import onnx

    proc, builds = run_build_engines(tmp_path, "110100", fp16_onnx_age=-10)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fp16 = onnx.load(str(tmp_path / "out" / "resnet_cifar10_fp16.onnx"))  # a real conversion, not the stale file
    assert onnx.TensorProto.FLOAT16 in {t.data_type for t in fp16.graph.initializer}


def test_build_engines_without_trtexec_is_a_sentence(tmp_path):
    if any(os.access(os.path.join(d, "trtexec"), os.X_OK) for d in ("/usr/bin", "/bin", *TRTEXEC_DIRS)):
        pytest.skip("this machine has a real trtexec")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_engines.sh")], cwd=ROOT, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "OUTPUT_DIR": str(tmp_path)})
    assert proc.returncode == 2 and "trtexec is not on PATH, in /opt/tensorrt/bin or in /usr/src/tensorrt/bin" in \
        proc.stderr
