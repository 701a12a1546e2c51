"""Data parallelism over torch.distributed ranks (torchrun): calibration, evaluation and (QAT) training.

Without an initialised process group every function here is the one-process code path, unchanged: `world()` is
(0, 1), `calibrate` is calibration.calibrate, `wrap` returns the model itself, `shard` yields every item.

With one, each rank runs a rank-strided share of the batches (rank r takes batches r, r + N, ...), and before any
scale is computed every observer's statistics are merged across ranks (`reduce_observers`), so every rank holds the
same statistics and converts the same INT8 model:

- MinMaxObserver, PerChannelMinMaxObserver: the min of the minima and the max of the maxima (exact).
- RangeObserver (percentile, entropy, mse, auto): exact min/max, the count of exact zeros summed, and its histogram
  widened to the largest rank's range and summed. Its grid is the first non-zero batch's |x| max times a power of
  two, so `calibrate` first sends rank 0's grid (set by its first batch, the one-process run's first batch too) to
  the other ranks: every grid is then that base times a power of two and widening is the exact merge of bins, which
  makes the merged histogram the one-process one. A grid that is not (e.g. a layer whose first batch was all
  zeros) is re-binned by bin centres, an approximation that `reduce_observers` counts.
- torch.ao HistogramObserver (histogram): range [global min, global max], each rank's histogram mapped onto it
  with the observer's own `_combine_histograms`. Not identical to one process: one process re-bins its histogram
  approximately every time the range grows, in batch order, so its result depends on that order itself.

All collectives go through `exchange`, which carries each rank's failure: a rank whose local work raised still
takes part, and every rank then raises the same PipelineError naming the failing rank's sentence, instead of
N tracebacks or a hang. Collectives are all_gather_object of small CPU states (observer buffers, counts), merged
in rank order on every rank, so every rank computes the same result.
"""

import itertools
import math
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import torch.distributed as dist
from torch.ao import quantization as tq
from torch.ao.quantization.observer import (FixedQParamsObserver, HistogramObserver, MinMaxObserver,
                                            MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver,
                                            NoopObserver, ObserverBase, PerChannelMinMaxObserver,
                                            PlaceholderObserver, RecordingObserver)

from ..errors import PipelineError
from ..runtime.inputs import as_args, rows
from .calibration import RangeObserver
from .calibration import calibrate as calibrate_one

# torchrun's environment (https://pytorch.org/docs/stable/elastic/run.html#environment-variables)
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# observers without statistics of the data (fixed or no quantization parameters): nothing to merge
STATELESS = (FixedQParamsObserver, PlaceholderObserver, NoopObserver, RecordingObserver)


# --- the process group -----------------------------------------------------------------------------------------

def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in one process): the rank that writes artifacts and prints results."""
    return world()[0] == 0


def launched_by_torchrun(env: Optional[dict] = None) -> bool:
    """True when torchrun (or another launcher) set WORLD_SIZE above 1 for this process."""
    env = os.environ if env is None else env
    return int(env.get("WORLD_SIZE", "1")) > 1


def init_from_env(backend: Optional[str] = None) -> tuple[int, int]:
    """Initialise the process group from torchrun's variables when they say WORLD_SIZE > 1; return (rank, world).

    Backend: nccl when CUDA is available (each rank on cuda:LOCAL_RANK), else gloo. One process: nothing happens.
    """
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return world()
    missing = [k for k in ENV if k not in os.environ]
    if missing:
        raise PipelineError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} are not set; start "
                            f"with torchrun --nproc_per_node N, which sets {', '.join(ENV)}")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend=backend)
    return world()


def device() -> torch.device:
    """This rank's training device: cuda:LOCAL_RANK under torchrun with CUDA, else CUDA or CPU as in one process."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if world()[1] > 1 else torch.device("cuda")


# --- exchanging, with failures -----------------------------------------------------------------------------------

def sentence(exc: BaseException) -> str:
    """One line saying what went wrong: a PipelineError's own sentence, else the exception's type and first line."""
    if isinstance(exc, PipelineError):
        return str(exc)
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def attempt(fn: Callable[[], Any]) -> tuple[Any, Optional[BaseException]]:
    """(fn(), None), or (None, the exception) when it raised: local work whose failure goes to the next exchange."""
    try:
        return fn(), None
    except Exception as exc:  # any failure of this rank: the other ranks must hear of it, not hang
        return None, exc


def exchange(payload: Any, error: Optional[BaseException] = None) -> list:
    """Every rank's `payload`, in rank order; if any rank passes an `error`, every rank raises PipelineError with
    the first failing rank's sentence. One process: [payload], or `error` raised as it is."""
    rank, size = world()
    if size == 1:
        if error is not None:
            raise error
        return [payload]
    gathered = [None] * size
    dist.all_gather_object(gathered, (None if error is None else sentence(error), payload))
    failed = [(r, why) for r, (why, _) in enumerate(gathered) if why is not None]
    if failed:
        r, why = failed[0]
        others = f" (and {len(failed) - 1} other rank(s))" if len(failed) > 1 else ""
        raise PipelineError(f"rank {r} of {size} failed{others}: {why}") from error
    return [p for _, p in gathered]


@contextmanager
def together():
    """Run a block of local work (no collectives inside) on every rank; if it raises on any rank, every rank raises
    one PipelineError naming the first failing rank and its sentence."""
    error = None
    try:
        yield
    except Exception as exc:  # reported to every rank by the exchange below
        error = exc
    exchange(None, error)


# --- sharding -----------------------------------------------------------------------------------------------------

def shard(items: Iterable, equal: bool = False) -> Iterable:
    """This rank's items: rank r takes items r, r + N, ... (all of them in one process). With `equal`, the last
    len % N items are dropped so that every rank takes the same number of steps (DDP needs equal step counts)."""
    rank, size = world()
    if size == 1:
        return items
    if equal:
        items = list(items)
        items = items[:len(items) - len(items) % size]
    return itertools.islice(items, rank, None, size)


# --- merging observers -------------------------------------------------------------------------------------------

def observers(model: torch.nn.Module) -> dict[str, ObserverBase]:
    """Every observer of a prepared (PTQ) or QAT model, by module name (inside FakeQuantize too)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ObserverBase)}


def _state(obs: ObserverBase) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in obs._buffers.items() if v is not None}


def _set(obs: ObserverBase, name: str, value: torch.Tensor) -> None:
    buf = getattr(obs, name)
    buf.resize_(value.shape)
    buf.copy_(value.to(buf.device, buf.dtype))


def _merge_minmax(obs: ObserverBase, states: list[dict]) -> str:
    seen = [s for s in states if s["min_val"].numel()]  # a per-channel observer is empty until it first runs
    if seen:
        _set(obs, "min_val", torch.stack([s["min_val"] for s in seen]).amin(0))
        _set(obs, "max_val", torch.stack([s["max_val"] for s in seen]).amax(0))
    return "minmax"


def _merge_histogram(obs: HistogramObserver, states: list[dict]) -> str:
    seen = [s for s in states if torch.isfinite(s["min_val"]).all()]
    if not seen:
        return "histogram"
    lo = torch.stack([s["min_val"] for s in seen]).amin()
    hi = torch.stack([s["max_val"] for s in seen]).amax()
    merged = torch.zeros(obs.bins)
    for s in seen:  # torch.ao's own re-binning of a histogram onto a wider range
        merged = obs._combine_histograms(s["histogram"].float(), s["min_val"], s["max_val"], merged, lo, hi)
    _set(obs, "histogram", merged)
    _set(obs, "min_val", lo)
    _set(obs, "max_val", hi)
    return "histogram"


def _widen_exactly(obs: RangeObserver, histogram: torch.Tensor, limit: torch.Tensor,
                   target: torch.Tensor) -> Optional[torch.Tensor]:
    """`histogram` (range `limit`) on the range `target` by merging bins as RangeObserver does; None when target is
    not limit times a power of two."""
    doublings = round(math.log2(target.item() / limit.item()))
    if doublings < 0 or limit * 2.0 ** doublings != target:
        return None
    scratch = RangeObserver(bins=obs.bins)
    scratch.histogram.copy_(histogram)
    scratch.limit.copy_(limit)
    if doublings:
        scratch._widen(doublings)
    return scratch.histogram


def _rebin_by_centres(histogram: torch.Tensor, bins: int, limit: float, target: float) -> torch.Tensor:
    """Approximate: each bin's count moved to the bin of `target`'s grid that holds its centre."""
    centres = (torch.arange(2 * bins, dtype=torch.float64) + 0.5) * (limit / bins) - limit
    index = ((centres + target) / (target / bins)).floor().long().clamp(0, 2 * bins - 1)
    return torch.bincount(index, weights=histogram, minlength=2 * bins)


def _merge_range(obs: RangeObserver, states: list[dict]) -> str:
    _set(obs, "min_val", torch.stack([s["min_val"] for s in states]).amin())
    _set(obs, "max_val", torch.stack([s["max_val"] for s in states]).amax())
    zeros = sum(s["zeros"] for s in states)
    _set(obs, "zeros", zeros)
    ranged = [s for s in states if s["limit"] > 0]
    if not ranged:
        return "range"
    target = torch.stack([s["limit"] for s in ranged]).amax()
    merged, kind = torch.zeros(2 * obs.bins, dtype=torch.float64), "range"
    for s in ranged:
        widened = _widen_exactly(obs, s["histogram"], s["limit"], target)
        if widened is None:
            widened = _rebin_by_centres(s["histogram"], obs.bins, s["limit"].item(), target.item())
            kind = "range_rebinned"
        merged += widened
    # a rank whose tensor was all zeros so far has no range: its zeros go to the first positive bin, as
    # RangeObserver._add puts zeros seen before the range was set
    merged[obs.bins] += sum(s["zeros"] for s in states if not s["limit"] > 0)
    _set(obs, "histogram", merged)
    _set(obs, "limit", target)
    return kind


def _merger(obs: ObserverBase) -> Optional[Callable]:
    """The merge for this observer type; None for observers without data statistics; raises for unknown ones."""
    if isinstance(obs, STATELESS):
        return None
    if isinstance(obs, (MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver)):
        raise PipelineError(f"{type(obs).__name__} averages over steps, so ranks' statistics cannot be merged into "
                            f"the one-process value; use MinMaxObserver or the project's qconfig")
    for kind, merge in ((RangeObserver, _merge_range), (HistogramObserver, _merge_histogram),
                        (PerChannelMinMaxObserver, _merge_minmax), (MinMaxObserver, _merge_minmax)):
        if isinstance(obs, kind):
            return merge
    raise PipelineError(f"no cross-rank merge for observer {type(obs).__name__}; supported: MinMaxObserver, "
                        f"PerChannelMinMaxObserver, HistogramObserver, RangeObserver")


def refresh_fake_quant(model: torch.nn.Module) -> int:
    """Recompute every FakeQuantize's scale and zero point from its (merged) observer, in place, as its forward
    does; return how many. Needed because FakeQuantize caches them from the local statistics of its last step."""
    count = 0
    for fq in model.modules():
        if isinstance(fq, tq.FakeQuantize) and _has_run(fq.activation_post_process):
            scale, zero_point = fq.calculate_qparams()
            fq.scale.resize_(scale.shape).copy_(scale.to(fq.scale.device))
            fq.zero_point.resize_(zero_point.shape).copy_(zero_point.to(fq.zero_point.device))
            count += 1
    return count


def _has_run(obs) -> bool:
    min_val = getattr(obs, "min_val", None)
    return min_val is not None and min_val.numel() > 0 and bool(torch.isfinite(min_val).all())


def reduce_observers(model: torch.nn.Module, error: Optional[BaseException] = None) -> dict[str, int]:
    """Merge every observer's statistics across ranks, in place, so every rank holds the same ones (module
    docstring: how, per type); refresh FakeQuantize's cached scales. Returns how many observers were merged per
    kind (minmax, histogram, range, range_rebinned: approximate). One process: nothing changes, {}.
    A rank that failed passes its `error`: every rank then raises one PipelineError naming it."""
    if world()[1] == 1:
        exchange(None, error)
        return {}
    found, merges = observers(model), {}
    if error is None:
        merges, error = attempt(lambda: {name: _merger(obs) for name, obs in found.items()})
    gathered = exchange({name: _state(obs) for name, obs in found.items()} if error is None else None, error)
    if any(set(g) != set(found) for g in gathered):
        raise PipelineError("the ranks' models have different observers; every rank must prepare the same model")
    counts: dict[str, int] = {}
    for name, obs in found.items():
        if merges[name] is not None:
            kind = merges[name](obs, [g[name] for g in gathered])
            counts[kind] = counts.get(kind, 0) + 1
    refresh_fake_quant(model)
    return counts


# --- calibration --------------------------------------------------------------------------------------------------

def _run(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> int:
    seen = 0
    with torch.no_grad():
        for x in batches:
            model(*as_args(x))
            seen += rows(x)
    return seen


def _grids(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: obs.limit.detach().cpu().clone() for name, obs in observers(model).items()
            if isinstance(obs, RangeObserver)}


def _seed_grids(model: torch.nn.Module, grids: dict[str, torch.Tensor]) -> None:
    """Start each unused RangeObserver's histogram on rank 0's grid, so all ranks' grids merge exactly."""
    for name, obs in observers(model).items():
        if isinstance(obs, RangeObserver) and obs.limit.item() == 0.0 and obs.histogram.sum() == 0:
            obs.limit.copy_(grids.get(name, obs.limit))


def calibrate(prepared: torch.nn.Module, batches: Sequence[torch.Tensor], desc: str = "calibrating") -> int:
    """Run this rank's share of `batches` (every rank passes the same list) through a prepared model, then merge
    the observers across ranks; return the images seen by all ranks. One process: calibration.calibrate.

    Rank 0 runs its first batch (batch 0) before the others start and sends them its RangeObserver grids, so the
    merged statistics are the one-process run's (module docstring)."""
    rank, size = world()
    if size == 1:
        return calibrate_one(prepared, batches, desc)
    mine = list(shard(list(batches)))
    first, error = attempt(lambda: _run(prepared, mine[:1]) if rank == 0 else 0)
    grids = exchange(_grids(prepared) if error is None and rank == 0 else None, error)[0]
    if rank:
        _seed_grids(prepared, grids)
    rest, error = attempt(lambda: _run(prepared, mine[1:] if rank == 0 else mine))
    seen = sum(exchange(None if error else first + rest, error))
    reduce_observers(prepared)
    if not seen:
        raise PipelineError("no calibration batches were given; pass at least one batch of real inputs")
    return seen


# --- evaluation ---------------------------------------------------------------------------------------------------

def all_sum(*values):
    """Each value (a number or a one-element tensor) summed over ranks, the same type back; one process: `values`
    unchanged. Goes through `exchange`, so it is also where a rank's failure would be heard."""
    if world()[1] == 1:
        return values
    numbers = [v.item() if isinstance(v, torch.Tensor) else v for v in values]
    totals = [sum(column) for column in zip(*exchange(numbers))]
    return tuple(torch.tensor(t, dtype=v.dtype, device=v.device) if isinstance(v, torch.Tensor) else type(v)(t)
                 for v, t in zip(values, totals))


def correct_and_total(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[int, int]:
    """Top-1 correct and total over all ranks, each rank running its share of (images, labels) batches."""
    def count():
        correct = total = 0
        with torch.no_grad():
            for x, y in shard(batches):
                correct += int((model(x).argmax(1) == y.to(x.device)).sum())
                total += len(y)
        return correct, total

    result, error = attempt(count)
    gathered = exchange(result, error)
    return sum(c for c, _ in gathered), sum(t for _, t in gathered)


def accuracy(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy of `model` over (images, labels) batches shared among the ranks: exact counts gathered, so
    the same figure as one process."""
    correct, total = correct_and_total(model, batches)
    if not total:
        raise PipelineError("no evaluation batches were given; pass at least one batch of images and labels")
    return correct / total


# --- training -----------------------------------------------------------------------------------------------------

def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """DistributedDataParallel around `model` (already on this rank's device) when distributed, else `model`.

    DDP averages the gradients, so every rank takes the same step, and broadcasts rank 0's buffers before each
    forward (broadcast_buffers, the default): BatchNorm statistics and the observers' and FakeQuantize's buffers
    stay rank 0's on every rank."""
    if world()[1] == 1:
        return model
    on_cuda = next(model.parameters()).device.type == "cuda"
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if on_cuda
                                                     else None)
