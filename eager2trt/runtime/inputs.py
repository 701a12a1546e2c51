"""The one source of random model inputs, the input shape an ONNX graph declares, and peeking at a batch stream."""

import itertools
from typing import Iterable

import onnx
import torch

from ..errors import PipelineError


def random_batches(shape: tuple, n: int = 2, seed: int = 0) -> list[torch.Tensor]:
    """`n` standard-normal float32 batches of `shape` (NCHW) from a seeded generator: the same every run."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) for _ in range(n)]


def onnx_input_shape(model: onnx.ModelProto, batch_size: int = 8) -> list[int]:
    """The first graph input's shape, a symbolic batch dimension replaced by `batch_size`."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else (batch_size if i == 0 else None) for i, d in enumerate(dims)]
    if None in shape:
        raise PipelineError(f"input {model.graph.input[0].name} has symbolic non-batch dimensions {shape}; "
                            f"export the model with a fixed image size")
    return shape


def peek(batches: Iterable[torch.Tensor], name: str) -> tuple[torch.Tensor, Iterable[torch.Tensor]]:
    """The first batch, and an iterator that still yields every batch (a generator is read once); one sentence
    naming the argument `name` when there is no batch."""
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise PipelineError(f"{name} is empty; pass at least one batch of real inputs")
    return first, itertools.chain([first], it)
