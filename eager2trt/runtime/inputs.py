"""Model inputs and outputs: the one source of random inputs, the shapes an ONNX graph declares, peeking at a batch
stream, and the structure of a batch (one tensor, a tuple of a multi-input model's inputs, or a dict keyed by
forward()'s parameter names, ModelOpt's convention) and of a model's outputs (one tensor, a tuple, a dict)."""

import itertools
from typing import Iterable, Sequence, Union

import numpy as np
import onnx
import torch

from ..errors import PipelineError

Batch = Union[torch.Tensor, tuple, list, dict]


def forward_names(model: torch.nn.Module) -> list[str]:
    """The names of forward()'s positional parameters without a default (the inputs every call must pass; a
    multi-input model's graph inputs are named after them)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # a builtin or scripted forward: nothing to read, let the run tell
        return []
    return [p.name for p in params if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def as_args(batch: Batch, names: Sequence[str] = ()) -> tuple:
    """A batch as forward()'s positional inputs: a tensor is the one input, a tuple or list gives them in order, a
    dict is read in the order of `names` (forward()'s parameters; its own order without them)."""
    if isinstance(batch, dict):
        missing = [n for n in names if n not in batch]
        if missing:
            raise PipelineError(f"a batch keyed by input name has no {', '.join(missing)} (it has "
                                f"{', '.join(map(str, batch))}); key it by forward()'s parameter names")
        return tuple(batch[n] for n in names) if names else tuple(batch.values())
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def rows(batch: Batch) -> int:
    """The number of samples in a batch (its first input's first dimension)."""
    return len(as_args(batch)[0])


def head(batch: Batch, n: int) -> Batch:
    """The first `n` samples of a batch, in the batch's own structure."""
    if isinstance(batch, dict):
        return {k: v[:n] for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return tuple(x[:n] for x in batch)
    return batch[:n]


def as_outputs(out) -> list[torch.Tensor]:
    """A model's outputs as a list: one tensor, a tuple or list of them, or a dict's values in order."""
    if isinstance(out, dict):
        return list(out.values())
    return list(out) if isinstance(out, (tuple, list)) else [out]


def output_names(out, single: str = "output") -> list[str]:
    """The graph output names of a model's outputs: `single` for one tensor, a dict's keys, output0.. for a tuple."""
    if isinstance(out, dict):
        return [str(k) for k in out]
    if isinstance(out, (tuple, list)):
        return [f"{single}{i}" for i in range(len(out))]
    return [single]


def random_batches(shape: Union[tuple, list], n: int = 2, seed: int = 0) -> list:
    """`n` standard-normal float32 batches from a seeded generator, the same every run: of `shape` (one input, a
    tuple of ints), or a tuple of one tensor per shape when `shape` is a list of shapes (several inputs)."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(shape, list) and shape and isinstance(shape[0], (tuple, list)):
        return [tuple(torch.randn(*s, generator=gen) for s in shape) for _ in range(n)]
    return [torch.randn(*shape, generator=gen) for _ in range(n)]


def shapes_of(batch: Batch, rows_: int) -> Union[tuple, list]:
    """The shape(s) of `rows_` samples like `batch`'s: one shape for one input, a list of shapes for several."""
    shapes = [(rows_, *x.shape[1:]) for x in as_args(batch)]
    return shapes[0] if len(shapes) == 1 else shapes


def onnx_input_shape(model: onnx.ModelProto, batch_size: int = 8) -> Union[list, list[list]]:
    """The graph input's shape, a symbolic batch dimension replaced by `batch_size`; a list of shapes for a graph
    with several inputs."""
    shapes = []
    for graph_input in model.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else (batch_size if i == 0 else None)
                 for i, d in enumerate(dims)]
        if None in shape:
            raise PipelineError(f"input {graph_input.name} has symbolic non-batch dimensions {shape}; "
                                f"export the model with a fixed image size")
        shapes.append(tuple(shape))
    return list(shapes[0]) if len(shapes) == 1 else shapes


def numpy_feed(names: Sequence[str], batch: Batch) -> dict:
    """onnxruntime's feed for a batch: each input as a float32 numpy array, by graph input name."""
    if isinstance(batch, dict):
        return {n: np.asarray(torch.as_tensor(batch[n]).cpu(), dtype=np.float32) for n in names}
    args = as_args(batch)
    if len(args) != len(names):
        raise PipelineError(f"a batch has {len(args)} inputs, the graph takes {len(names)} ({', '.join(names)}); "
                            f"pass one tensor per input")
    return {n: np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
            for n, x in zip(names, args)}


def peek(batches: Iterable, name: str) -> tuple:
    """The first batch, and an iterator that still yields every batch (a generator is read once); one sentence
    naming the argument `name` when there is no batch."""
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise PipelineError(f"{name} is empty; pass at least one batch of real inputs")
    return first, itertools.chain([first], it)
