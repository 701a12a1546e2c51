"""The held-out data a run is checked on: batches with their labels, read again on every pass and never kept.

Two ways in, both checked where they enter (inputs.check_batches, one sentence naming the argument):
- `images=` a list of batches with `labels=` (one label per sample, or one label map per sample), or without;
- `data=` any re-iterable of (inputs, labels) pairs: a torch DataLoader over an ImageFolder with workers, a
  CIFAR-10 Split's or FolderSplit's batches. Nothing of it is held in memory: each pass reads it again, and the
  checks read running statistics (checks/tally.py).
A batch is one tensor, or a tuple (or dict by forward()'s parameter names) of a multi-input model's inputs.
"""

from typing import Iterator, Optional

import numpy as np
import torch

from .errors import PipelineError
from .inputs import check_batches
from .runtime.inputs import head, rows


class HeldOut:
    """Re-iterable (batch, labels or None) pairs; `labelled` tells whether labels come with them. `model` (or, for a
    graph-level caller without one, `shape`: the graph's input CHW) is what each batch is checked against."""

    def __init__(self, pairs, labelled: bool, name: str, model: Optional[torch.nn.Module], shape: Optional[tuple]):
        self._pairs, self.labelled, self.name = pairs, labelled, name
        self._model, self._shape = model, shape

    def __iter__(self) -> Iterator[tuple]:
        stash = []  # the labels of the batches drawn so far, in order: the data is read once per pass

        def inputs():
            for i, item in enumerate(_read(self._pairs, self.name)):
                batch, labels = _pair(item, self.name, i, self.labelled)
                stash.append(labels)
                yield batch

        batches = inputs() if self._model is None and self._shape is None else \
            check_batches(inputs(), self.name, self._model, self._shape)
        for batch in batches:
            labels = stash.pop(0)
            if labels is not None and _length(labels) not in (None, rows(batch)):
                raise PipelineError(f"{self.name} gives {_length(labels)} labels for a batch of {rows(batch)} "
                                    f"samples; pass one label (or label map) per sample")
            yield batch, labels

    def first(self) -> tuple:
        """The first (batch, labels) pair, checked (what the run checks against the model before writing)."""
        return next(iter(self))

    def sample(self, n: int) -> tuple[list, Optional[torch.Tensor]]:
        """The first `n` samples as (batches, labels or None): what the layer ranking of a failed guard and the
        requantization check measure on (bounded, whatever the data's size). Labels other than tensors (a
        metric's targets) are left out."""
        batches, labels, taken = [], [], 0
        for batch, y in self:
            take = min(rows(batch), n - taken)
            batches.append(head(batch, take))
            labels.append(torch.as_tensor(y)[:take] if isinstance(y, (torch.Tensor, np.ndarray)) else None)
            taken += take
            if taken >= n:
                break
        return batches, (torch.cat(labels) if labels and all(y is not None for y in labels) else None)


def _read(pairs, name: str):
    """The items of `pairs`; an exception of the user's data (a file that cannot be read, a missing transform)
    told in one sentence naming the batch."""
    it, i = None, 0
    try:
        it = iter(pairs)
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            yield item
            i += 1
    except PipelineError:
        raise
    except Exception as exc:  # the user's Dataset and DataLoader: any exception type
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        hint = "; add transforms.ToTensor() (or PILToTensor) to the dataset" if "PIL" in reason else ""
        raise PipelineError(f"{name} fails on batch {i} ({type(exc).__name__}: {reason}); fix the data set or its "
                            f"DataLoader{hint}") from None


def _pair(item, name: str, i: int, labelled: bool) -> tuple:
    """One (inputs, labels) item of `data=` (labelled) or of images/labels lists, checked for its structure."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        what = f"{type(item).__name__}s of {len(item)} items" if isinstance(item, (tuple, list)) else \
            type(item).__name__
        raise PipelineError(f"{name} yields {what}; pass an iterable of (inputs, labels) pairs, e.g. a DataLoader over "
                            f"an ImageFolder (a TensorDataset of 3 tensors gives triples)")
    if labelled and item[1] is None:
        raise PipelineError(f"{name} gives no labels (None) for batch {i}; pass (inputs, labels) pairs, or images= "
                            f"without labels= for unlabelled data")
    return item[0], item[1]


def _length(labels) -> Optional[int]:
    try:
        return len(labels)
    except TypeError:
        return None


def held_out(images, labels, data, model: Optional[torch.nn.Module], shape: Optional[tuple]) -> Optional[HeldOut]:
    """The run's held-out data from quantize_to_tensorrt's arguments (None without any), checked as it is read
    against `model` (or, without one, the graph's input `shape`)."""
    if data is not None:
        if images is not None or labels is not None:
            raise PipelineError("data= gives (inputs, labels) pairs; pass either data= or images= (and labels=), "
                                "not both")
        if not hasattr(data, "__iter__"):
            raise PipelineError(f"data is a {type(data).__name__}; pass an iterable of (inputs, labels) pairs, e.g. a "
                                f"torch DataLoader")
        if iter(data) is data:
            raise PipelineError(f"data is a {type(data).__name__} that can be read only once; pass something read "
                                f"again on every pass (a torch DataLoader, a list of (inputs, labels) pairs)")
        first = next(_read(data, "data"), None)
        if first is None:
            raise PipelineError("data yields nothing; pass an iterable of (inputs, labels) pairs, e.g. a DataLoader "
                                "over an ImageFolder")
        _pair(first, "data", 0, True)
        return HeldOut(data, True, "data", model, shape)
    if images is None:
        return None
    if labels is None:
        return HeldOut(_ListPairs(images, None), False, "images", model, shape)
    try:
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise PipelineError(f"labels cannot be read as a tensor ({str(exc).splitlines()[0][:100]}); pass integer class "
                            f"indices (or label maps), or data= (inputs, targets) pairs with metric= for other "
                            f"targets") from None
    return HeldOut(_ListPairs(images, labels), True, "images", model, shape)


EVAL_BATCH = 500  # held-out images per batch where they are small (CIFAR-10's figures were measured so)
EVAL_BATCH_BYTES = 64 * 2**20  # and fewer where 500 would pass this as float32 (224 px: 111 images)


def evaluation_batch_size(sample_shape) -> int:
    """Held-out images per evaluation batch for samples of `sample_shape`: the CPU runners' memory grows with the
    batch (onnxruntime's arenas hold a batch's activations; ResNet50 at 224 px, batch 250: 22 GB resident on a
    16-core host, more than a 24 GiB 2-core machine has)."""
    per_sample = 4 * int(np.prod(sample_shape))
    return max(1, min(EVAL_BATCH, EVAL_BATCH_BYTES // per_sample))


class SplitBatches:
    """A data set's (images, labels) batches in stored order, read again on every pass: anything with
    `batches(batch_size)` (a CIFAR-10 Split, an image folder's FolderSplit, whose DataLoader decodes with workers).
    Without a batch size, evaluation_batch_size of the first image's shape."""

    def __init__(self, split, batch_size: Optional[int] = None):
        self.split, self.batch_size = split, batch_size

    def __iter__(self):
        if self.batch_size is None:
            first = next(iter(self.split.batches(1)))[0]
            self.batch_size = evaluation_batch_size(tuple(first.shape[1:]))
        return iter(self.split.batches(self.batch_size))


class _ListPairs:
    """A list of batches and all their labels as (batch, labels) pairs, split by the batches' sizes."""

    def __init__(self, images: list, labels: Optional[torch.Tensor]):
        self.images, self.labels = images, labels

    def __iter__(self):
        start = 0
        for b in self.images:
            n = rows(b)
            yield b, (None if self.labels is None else self.labels[start:start + n])
            start += n
