"""A thin TensorRT runtime over the name-based tensor API common to TensorRT 10 and 11.

Only documented calls: Runtime.deserialize_cuda_engine, ICudaEngine.num_io_tensors /
get_tensor_name / get_tensor_mode / get_tensor_shape / get_tensor_dtype / get_tensor_format_desc /
get_tensor_profile_shape, IExecutionContext.set_input_shape / set_tensor_address / execute_async_v3.
Device buffers are torch CUDA tensors and the stream a torch.cuda.Stream of the engine's own (no pycuda).
"""

from pathlib import Path

import torch

from ..errors import PipelineError

NO_TENSORRT = ("TensorRT is not installed here (import tensorrt failed); run this inside the Docker image "
               "(docker/pytorch-tensorrt.Dockerfile), or validate the ONNX model with --onnx instead")


def import_tensorrt():
    """The tensorrt module, or one sentence saying how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise PipelineError(NO_TENSORRT) from None
    return tensorrt


def _torch_dtype(trt, dtype, name: str) -> torch.dtype:
    """The torch dtype for an engine I/O tensor, or one sentence naming the tensor and its unsupported type."""
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int8: torch.int8,
             trt.int32: torch.int32, trt.bool: torch.bool}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dtype not in table:  # int64, uint8, FP8, INT4, FP4...: not an image classifier's float input or logits
        raise PipelineError(f"engine tensor {name!r} has type {dtype}, which this runtime does not feed or read "
                            f"(it takes float32, float16, bfloat16, int8, int32 or bool I/O); export the model "
                            f"with a float32 input and output and rebuild the engine")
    return table[dtype]


class Engine:
    """A deserialized engine with one execution context; call it on a CUDA tensor."""

    def __init__(self, path: Path):
        trt = self.trt = import_tensorrt()
        path = Path(path)
        if not path.is_file():
            raise PipelineError(f"engine {path} does not exist; build it with scripts/build_engines.sh")
        if not torch.cuda.is_available():
            raise PipelineError("TensorRT engines need an NVIDIA GPU and none is visible to PyTorch; run on a "
                                "GPU machine (docker run --gpus all ...)")
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:  # TensorRT returns None, not an exception, for corrupt or foreign engines
            raise PipelineError(f"TensorRT {trt.__version__} could not deserialize {path}: it is corrupt or was "
                                f"built by another TensorRT version or for another GPU; rebuild it with "
                                f"scripts/build_engines.sh on this machine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise PipelineError(f"{path} has inputs {self.inputs} and outputs {self.outputs}; this tool expects one "
                                f"image input and one logits output")
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n), n) for n in names}
        # TensorRT warns that enqueueing on the legacy default stream costs extra synchronization; like
        # Torch-TensorRT and Polygraphy, run on a stream of our own, ordered against the caller's at each call.
        self.stream = torch.cuda.Stream()

    def describe(self) -> list[dict]:
        """Name, shape, dtype and format of each I/O tensor, as the reference prints them."""
        rows = []
        for name in self.inputs + self.outputs:
            rows.append({"name": name, "mode": "input" if name in self.inputs else "output",
                         "shape": list(self.engine.get_tensor_shape(name)),
                         "dtype": str(self.engine.get_tensor_dtype(name)),
                         "format": self.engine.get_tensor_format_desc(name)})
        return rows

    def batch_range(self) -> tuple[int, int]:
        """The smallest and largest batch the input's optimization profile 0 accepts."""
        shape = list(self.engine.get_tensor_shape(self.inputs[0]))
        if shape[0] != -1:
            return shape[0], shape[0]
        lo, _, hi = self.engine.get_tensor_profile_shape(self.inputs[0], 0)
        return lo[0], hi[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Run one batch (NCHW, on the GPU) and return the logits as a CUDA tensor."""
        lo, hi = self.batch_range()
        expected = list(self.engine.get_tensor_shape(self.inputs[0]))[1:]
        if not lo <= x.shape[0] <= hi or list(x.shape[1:]) != expected:
            raise PipelineError(f"input shape {list(x.shape)} is outside the engine's profile (batch {lo}..{hi}, "
                                f"image {expected}); pass --batch-size within it or rebuild with SHAPES=...")
        # Input copy and output are allocated on the caller's stream, so the caching allocator reuses them only
        # for later work on that stream, which the wait below orders after TensorRT has finished with them.
        caller = torch.cuda.current_stream()
        x = x.to(self.dtypes[self.inputs[0]]).contiguous()
        self.context.set_input_shape(self.inputs[0], tuple(x.shape))
        out_shape = tuple(self.context.get_tensor_shape(self.outputs[0]))
        out = torch.empty(out_shape, dtype=self.dtypes[self.outputs[0]], device=x.device)
        self.context.set_tensor_address(self.inputs[0], x.data_ptr())
        self.context.set_tensor_address(self.outputs[0], out.data_ptr())
        self.stream.wait_stream(caller)  # TensorRT reads the input only once the caller's stream has written it
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise PipelineError("TensorRT failed to enqueue the inference (execute_async_v3 returned False); "
                                "see the TensorRT log above")
        caller.wait_stream(self.stream)  # the caller's later work sees the finished logits
        return out.float()
