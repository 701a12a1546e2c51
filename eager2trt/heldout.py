"""The held-out data a run is checked on: batches with their labels, read again on every pass and never kept.

Two ways in, both checked where they enter (inputs.check_batches, one sentence naming the argument):
- `images=` a list of batches with `labels=` (one label per sample, or one label map per sample), or without;
- `data=` any re-iterable of (inputs, labels) pairs: a torch DataLoader over an ImageFolder with workers, a
  CIFAR-10 Split's or FolderSplit's batches. Nothing of it is held in memory: each pass reads it again, and the
  checks read running statistics (checks/tally.py).
A batch is one tensor, or a tuple (or dict by forward()'s parameter names) of a multi-input model's inputs.
"""

from typing import Iterator, Optional

import torch

from .errors import PipelineError
from .inputs import check_batches
from .runtime.inputs import head, rows


class HeldOut:
    """Re-iterable (batch, labels or None) pairs; `labelled` tells whether labels come with them."""

    def __init__(self, pairs, labelled: bool, name: str, model: torch.nn.Module, shape: tuple):
        self._pairs, self.labelled, self.name = pairs, labelled, name
        self._model, self._shape = model, shape

    def __iter__(self) -> Iterator[tuple]:
        stash = []  # the labels of the batches drawn so far, in order: the data is read once per pass

        def inputs():
            for batch, labels in self._pairs:
                stash.append(labels)
                yield batch

        # a graph-level caller (rewrite_onnx, write_fp16) has no model to check against: its graphs tell
        batches = inputs() if self._model is None else check_batches(inputs(), self.name, self._model, self._shape)
        for batch in batches:
            labels = stash.pop(0)
            if labels is not None and len(labels) != rows(batch):
                raise PipelineError(f"{self.name} gives {len(labels)} labels for a batch of {rows(batch)} samples; "
                                    f"pass one label (or label map) per sample")
            yield batch, labels

    def sample(self, n: int) -> tuple[list, Optional[torch.Tensor]]:
        """The first `n` samples as (batches, labels or None): what the layer ranking of a failed guard and the
        requantization check measure on (bounded, whatever the data's size)."""
        batches, labels, taken = [], [], 0
        for batch, y in self:
            take = min(rows(batch), n - taken)
            batches.append(head(batch, take))
            labels.append(None if y is None else torch.as_tensor(y)[:take])
            taken += take
            if taken >= n:
                break
        return batches, (torch.cat(labels) if self.labelled else None)


def held_out(images, labels, data, model: torch.nn.Module, shape: tuple) -> Optional[HeldOut]:
    """The run's held-out data from quantize_to_tensorrt's arguments (None without any), checked as it is read."""
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
        first = next(iter(data), None)
        if not isinstance(first, (tuple, list)) or len(first) != 2:
            raise PipelineError(f"data yields {type(first).__name__ if first is not None else 'nothing'}; pass an "
                                f"iterable of (inputs, labels) pairs, e.g. a DataLoader over an ImageFolder")
        return HeldOut(data, True, "data", model, shape)
    if images is None:
        return None
    if labels is None:
        return HeldOut(_ListPairs(images, None), False, "images", model, shape)
    return HeldOut(_ListPairs(images, torch.as_tensor(labels)), True, "images", model, shape)


class SplitBatches:
    """A data set's (images, labels) batches in stored order, read again on every pass: anything with
    `batches(batch_size)` (a CIFAR-10 Split, an image folder's FolderSplit, whose DataLoader decodes with workers)."""

    def __init__(self, split, batch_size: int):
        self.split, self.batch_size = split, batch_size

    def __iter__(self):
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
