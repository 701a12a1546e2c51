"""One interface over PyTorch, onnxruntime and TensorRT, and one evaluator for all three.

A backend is called on a float NCHW CPU batch and returns CPU logits; `quantized` is read from the model
itself (quantized modules, Q/DQ nodes, INT8 layers), never from a file name.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import onnx
import torch
from tqdm import tqdm

from .. import contract
from ..eager.data import Split, iterate_batches
from .timing import measure, summarize


class PyTorchBackend:
    """An eager or TorchScript module on CPU or CUDA."""

    name = "pytorch"

    def __init__(self, model: torch.nn.Module, device: Union[str, torch.device] = "cpu", channels_last: bool = False):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.channels_last = channels_last
        self.quantized = is_quantized_module(model)

    def describe(self) -> list[dict]:
        return [{"name": "input", "mode": "input", "shape": ["batch", *contract.IMAGE_SHAPE], "dtype": "float32",
                 "format": "NCHW"}]

    def default_batch(self) -> int:
        return 1000

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            return self.model(x).float()

    def benchmark(self, batch: int, runs: int) -> dict:
        x = torch.randn(contract.image_batch_shape(batch))
        sync = torch.cuda.synchronize if self.device.type == "cuda" else None
        return measure(lambda: self(x), runs=runs, warmup=20, batch_size=batch, sync=sync)


def is_quantized_module(model: torch.nn.Module) -> bool:
    """Whether an eager or TorchScript model quantizes its input: a converted QuantStub (`Quantize`) inside."""
    return any(type(m).__name__ == "Quantize" or getattr(m, "original_name", None) == "Quantize"
               for m in model.modules())


class OnnxBackend:
    """onnxruntime (CPU); graph optimizations on as a deployment would run it, off to test the graph as written."""

    name = "onnxruntime"

    def __init__(self, model: Union[Path, onnx.ModelProto], optimize: bool = True, threads: int = 0):
        from ..graph.onnx_utils import is_quantized, load_onnx
        from ..checks.compare import ort_session

        proto = model if isinstance(model, onnx.ModelProto) else load_onnx(model)
        self.quantized = is_quantized(proto)
        self.session = ort_session(proto, optimize=optimize, threads=threads)
        self.input = self.session.get_inputs()[0].name

    def describe(self) -> list[dict]:
        return [{"name": t.name, "mode": mode, "shape": t.shape, "dtype": t.type, "format": "NCHW (linear)"}
                for mode, ts in (("input", self.session.get_inputs()), ("output", self.session.get_outputs()))
                for t in ts]

    def default_batch(self) -> int:
        return 500

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: x.cpu().numpy()})[0])

    def benchmark(self, batch: int, runs: int) -> dict:
        x = torch.randn(contract.image_batch_shape(batch))
        return measure(lambda: self(x), runs=runs, warmup=20, batch_size=batch)


class TensorRTBackend:
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

    def benchmark(self, batch: int, runs: int) -> dict:
        """Host latency split as trtexec does: H2D, GPU compute (CUDA events), D2H."""
        host = torch.randn(contract.image_batch_shape(batch)).pin_memory()
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


@dataclass
class Evaluation:
    accuracy: float
    logits: np.ndarray
    samples: int


def evaluate(backend, split: Split, batch_size: int = 0, progress: bool = True) -> Evaluation:
    """Top-1 accuracy and logits of any backend on `split`, in order (the one accuracy loop)."""
    batch_size = batch_size or backend.default_batch()
    batches = iterate_batches(split, batch_size)
    if progress:
        batches = tqdm(batches, total=-(-len(split) // batch_size), desc=backend.name, unit="batch", leave=False)
    logits = torch.cat([backend(x).cpu() for x, _ in batches]).numpy()
    accuracy = float((logits.argmax(1) == split.labels.cpu().numpy()).mean())
    return Evaluation(accuracy, logits, len(split))
