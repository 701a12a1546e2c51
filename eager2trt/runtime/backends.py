"""Runners for PyTorch, onnxruntime and TensorRT, and the one loop that feeds them batches.

After Polygraphy's runners: a runner only runs a model (float NCHW CPU batch in, CPU float logits out) and says
what it is (`name`, `quantized`, `describe`); `logits` and `evaluate` are the only loops over data, so every
figure (accuracy, equivalence, agreement) comes from the same code. `quantized` is read from the model itself
(quantized modules, Q/DQ nodes, INT8 layers), never from a file name.
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
import onnx
import torch
from tqdm import tqdm

from ..eager.quiet import quantized_api
from ..errors import PipelineError
from .inputs import as_args, as_outputs, forward_names, numpy_feed
from .timing import measure, summarize
from .torch_graph import TorchGraphRunner, no_tf32


class PyTorchRunner:
    """An eager or TorchScript module on CPU or CUDA (INT8 modules run on the current quantized engine; float32 on
    CUDA without TF32, as on the CPU)."""

    name = "pytorch"

    def __init__(self, model: torch.nn.Module, device: Union[str, torch.device] = "cpu", channels_last: bool = False,
                 image_shape: tuple = None):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.channels_last = channels_last
        self.quantized = is_quantized_module(model)
        self.image_shape = image_shape

    def describe(self) -> list[dict]:
        shape = ["batch", *(self.image_shape or ("C", "H", "W"))]
        return [{"name": "input", "mode": "input", "shape": shape, "dtype": "float32", "format": "NCHW"}]

    def default_batch(self) -> int:
        return 1000

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), quantized_api(), no_tf32():
            return self.model(x).float()

    def outputs(self, batch) -> list[np.ndarray]:
        """Every output on a batch of one or several inputs (a tensor, tuple or dict), as CPU float32 arrays."""
        args = [x.to(self.device, non_blocking=True) for x in as_args(batch, forward_names(self.model))]
        with torch.no_grad(), quantized_api(), no_tf32():
            return [o.float().cpu().numpy() for o in as_outputs(self.model(*args))]

    def benchmark(self, batch: int, runs: int, image_shape: tuple) -> dict:
        x = torch.randn(batch, *image_shape)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else None
        return measure(lambda: self(x), runs=runs, warmup=20, batch_size=batch, sync=sync)


def is_quantized_module(model: torch.nn.Module) -> bool:
    """Whether an eager or TorchScript model quantizes its input: a converted QuantStub (`Quantize`) inside."""
    return any(type(m).__name__ == "Quantize" or getattr(m, "original_name", None) == "Quantize"
               for m in model.modules())


# onnxruntime optimization levels, named for what they keep:
#   "keep_qdq" (default): every float optimization (constant folding, fusions, NCHWc kernels) but no Q/DQ fusion
#       (session.disable_quant_qdq), so each QuantizeLinear/DequantizeLinear runs as written: the graph's own
#       arithmetic, what TensorRT is given; measured on the shipped ResNet18 export vs its exact graph: max abs
#       difference 0 on 10,000 test images, 3-4x faster than "none".
#   "none": no optimization at all; "all": a CPU deployment's (Q/DQ fused into QLinearConv, other rounding).
ORT_MODES = ("keep_qdq", "none", "all")


def ort_session(model: Union[Path, str, onnx.ModelProto], optimize: str = "keep_qdq", threads: int = 0):
    """An onnxruntime CPU session at one of ORT_MODES."""
    import onnxruntime as ort

    if optimize not in ORT_MODES:
        raise ValueError(f"optimize={optimize!r}; choose one of {ORT_MODES}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if optimize == "none"
                                     else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if optimize == "keep_qdq":
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        name = "the model" if isinstance(model, onnx.ModelProto) else str(model)
        raise PipelineError(f"onnxruntime cannot load {name} ({str(exc).splitlines()[0][:160]}); "
                            f"check that it is an ONNX model exported by this project") from None


class OnnxRunner:
    """onnxruntime on CPU, Q/DQ kept as written by default (see ORT_MODES)."""

    name = "onnxruntime"

    def __init__(self, model: Union[Path, str, onnx.ModelProto], optimize: str = "keep_qdq", threads: int = 0):
        from ..graph.onnx_utils import is_quantized, load_onnx

        proto = model if isinstance(model, onnx.ModelProto) else load_onnx(model)
        self.quantized = is_quantized(proto)
        self.session = ort_session(proto, optimize=optimize, threads=threads)
        self.input = self.session.get_inputs()[0].name
        self.inputs = [i.name for i in self.session.get_inputs()]

    def describe(self) -> list[dict]:
        return [{"name": t.name, "mode": mode, "shape": t.shape, "dtype": t.type, "format": "NCHW (linear)"}
                for mode, ts in (("input", self.session.get_inputs()), ("output", self.session.get_outputs()))
                for t in ts]

    def default_batch(self) -> int:
        return 500

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: x.cpu().numpy()})[0])

    def outputs(self, batch) -> list[np.ndarray]:
        """Every graph output on a batch of one or several inputs, in graph order."""
        return self.session.run(None, numpy_feed(self.inputs, batch))

    def benchmark(self, batch: int, runs: int, image_shape: tuple) -> dict:
        x = torch.randn(batch, *image_shape)
        return measure(lambda: self(x), runs=runs, warmup=20, batch_size=batch)


class TensorRTRunner:
    """A serialized TensorRT engine (needs tensorrt and a GPU)."""

    name = "tensorrt"

    def __init__(self, path: Path):
        from .tensorrt import Engine

        self.engine = Engine(path)
        self.quantized = engine_is_int8(self.engine)

    def describe(self) -> list[dict]:
        return self.engine.describe()

    def default_batch(self) -> int:
        return min(self.engine.batch_range()[1], 256)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine(x.cuda(non_blocking=True)).cpu()

    def benchmark(self, batch: int, runs: int, image_shape: tuple) -> dict:
        """Host latency split as trtexec does: H2D, GPU compute (CUDA events), D2H."""
        host = torch.randn(batch, *image_shape).pin_memory()
        dev = host.cuda()
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        h2d, compute, d2h, total = [], [], [], []
        for i in range(runs + 20):
            ev[0].record()
            dev.copy_(host, non_blocking=True)
            ev[1].record()
            out = self.engine(dev)
            ev[2].record()
            out.cpu()
            ev[3].record()
            torch.cuda.synchronize()
            if i >= 20:
                h2d.append(ev[0].elapsed_time(ev[1]))
                compute.append(ev[1].elapsed_time(ev[2]))
                d2h.append(ev[2].elapsed_time(ev[3]))
                total.append(ev[0].elapsed_time(ev[3]))
        return {**summarize(total, batch), "gpu_compute": summarize(compute, batch),
                "h2d": summarize(h2d, batch), "d2h": summarize(d2h, batch)}


def engine_is_int8(engine) -> bool:
    """Whether an engine runs INT8 layers, read from the engine (inspector report, else I/O types)."""
    trt, cuda_engine = engine.trt, engine.engine
    try:
        info = cuda_engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    except AttributeError:  # an inspector-less build: fall back to the I/O tensor types
        info = ""
    if "int8" in info.lower():  # layer precisions/formats such as "Int8 NC/32HW32" (detailed profiling verbosity)
        return True
    names = engine.inputs + engine.outputs
    return any(cuda_engine.get_tensor_dtype(n) == trt.int8 for n in names)


def as_runner(model, **options):
    """A runner for a torch module, an ONNX model or path, or a runner itself."""
    if hasattr(model, "default_batch") and callable(model):
        return model
    if isinstance(model, torch.nn.Module):
        return PyTorchRunner(model, **options)
    return OnnxRunner(model, **options)


def logits(runner, batches: Iterable, desc: str = None) -> np.ndarray:
    """Float32 logits of `runner` on every batch (torch tensors or numpy arrays), concatenated in order: the one
    loop every check and figure is computed from."""
    out = []
    for b in tqdm(batches, desc=desc or runner.name, unit="batch", leave=False, disable=desc is False, delay=2.0):
        out.append(runner(torch.as_tensor(np.asarray(b, dtype=np.float32)) if not isinstance(b, torch.Tensor)
                          else b).cpu().float().numpy())
    return np.concatenate(out)


def run_together(runners: dict, data: Iterable, pairs: list, metric=None, desc: str = "models",
                 names: Optional[list] = None, sampled: tuple = (), sample: int = 0):
    """Every runner on each batch of `data` ((inputs, labels or None) pairs), in lockstep: each batch is read once
    and what the checks need is added to a Tally (checks/tally.py) for each (candidate, reference) of `pairs` and,
    with labels, each model's score. No output is kept, so memory does not grow with the data. `names`: the
    outputs' names, for the checks' words. The runners named in `sampled` (the slow CPU ones beside a GPU) run on
    the first batches only, until `sample` samples are seen; those batches are also tallied apart, every runner
    on them (tally.sample), so a sampled model is compared with the others on the same samples."""
    from ..checks.tally import Tally

    tally = Tally(list(names or []))
    part = Tally(list(names or [])) if sampled else None
    for batch, labels in tqdm(data, desc=desc, unit="batch", leave=False, delay=2.0):
        within = part is not None and part.samples < sample
        outputs = {}
        for name, runner in runners.items():
            if within or name not in sampled:
                t0 = time.perf_counter()
                outputs[name] = [np.asarray(o, np.float32) for o in runner.outputs(batch)]
                tally.seconds[name] = tally.seconds.get(name, 0.0) + time.perf_counter() - t0
                tally.seen[name] = tally.seen.get(name, 0) + len(outputs[name][0])
        tally.add(outputs, pairs, labels, metric)
        if within:
            part.add(outputs, pairs, labels, metric)
    if not tally.samples:
        raise PipelineError("the data to evaluate on holds no batches; pass at least one batch of real inputs")
    tally.sample = part
    return tally


def graph_runner(model, device: Union[str, torch.device] = "cpu"):
    """An ONNX graph's runner: onnxruntime for "cpu", Q/DQ as written; PyTorch on any other torch device (a GPU),
    the same arithmetic (runtime/torch_graph.py)."""
    if str(device) == "cpu":
        return OnnxRunner(model)
    return TorchGraphRunner(model if isinstance(model, onnx.ModelProto) else onnx.load(str(model)), device)


@dataclass
class Evaluation:
    accuracy: float
    logits: np.ndarray
    samples: int


def evaluate(runner, data, batch_size: int = 0, progress: bool = True) -> Evaluation:
    """Top-1 accuracy and logits of any runner on labelled `data`, in order: anything whose batches(batch_size)
    yields (images, labels) (a CIFAR-10 Split, an image folder's FolderSplit), or an iterable of (images, labels)
    pairs itself (e.g. a torch DataLoader)."""
    batch_size = batch_size or runner.default_batch()
    pairs = data.batches(batch_size) if hasattr(data, "batches") else data
    labels = []

    def images():
        for x, y in pairs:
            labels.append(torch.as_tensor(y).cpu())
            yield x

    out = logits(runner, images(), desc=runner.name if progress else False)
    if not labels:
        raise PipelineError("the data to evaluate on holds no images; check the data folder")
    y = torch.cat(labels)
    return Evaluation(accuracy_of(out, y), out, len(y))


def accuracy_of(logits_: np.ndarray, labels) -> float:
    """Top-1 accuracy of logits against labels (a tensor or an array)."""
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return float((logits_.argmax(1) == labels).mean())
