"""The main job under torchrun (`torchrun --nproc_per_node N resnet_torch.py ...`): jobs.main_job's own stages,
the data-parallel ones on every rank and the tail on rank 0 (docs/distributed.md, "What runs where").

Every rank: load the data, train (DDP) or load the FP32 model, then calibrate its share of the calibration batches
(observers merged across ranks) or fine-tune with QAT (DDP), and convert: every rank holds the same INT8 model.
Rank 0 alone: the output folder's lock (held for all ranks) and jobs.finish_job on that INT8 model (the pipeline
on the test images, FP16, latencies, metrics.json with pytorch.distributed). A failure on any rank that reaches an
exchange ends every rank with one sentence naming the failing rank (distributed.exchange).
"""

import contextlib
import time
from datetime import timedelta
from typing import Callable, Iterator, Optional, TypeVar

import torch.distributed as dist

from . import jobs
from .artifacts import output_lock
from .eager import distributed

T = TypeVar("T")
# How long the other ranks wait for rank 0's tail. The default group's timeout (30 min for gloo, 10 for nccl) is
# made for collectives, not for waiting out the pipeline on the whole test set, fallback search included.
TAIL_TIMEOUT = timedelta(hours=24)


def main_job(opts: jobs.JobOptions) -> Optional[dict]:
    """jobs.main_job across torchrun's ranks (module docstring), the process group already initialised: rank 0
    returns what jobs.main_job returns, the other ranks None once rank 0 has succeeded."""
    t_start = time.perf_counter()
    # a gloo group even beside nccl: a CPU barrier whose own timeout covers rank 0's tail
    patient = dist.new_group(backend="gloo", timeout=TAIL_TIMEOUT)
    with rank0_lock(opts.output_dir):
        inputs = main_rank_first(lambda: jobs.job_inputs(opts))
        models = data_parallel_models(opts, inputs)
        out, error = distributed.attempt(lambda: jobs.finish_job(opts, inputs, models, t_start, world_record())) \
            if distributed.is_main() else (None, None)
        dist.barrier(group=patient)
        distributed.exchange(None, error)  # rank 0's failure, if any, stops every rank with its sentence
    return out


@contextlib.contextmanager
def rank0_lock(output_dir) -> Iterator[None]:
    """The output folder's lock, taken by rank 0 (the one writer) for all ranks; a refusal stops every rank."""
    with contextlib.ExitStack() as stack:
        _, error = distributed.attempt(lambda: stack.enter_context(output_lock(output_dir))
                                       if distributed.is_main() else None)
        distributed.exchange(None, error)
        yield


def main_rank_first(fn: Callable[[], T]) -> T:
    """fn() on rank 0, then on the other ranks: rank 0 decodes a CIFAR-10 image folder once and writes the cache
    they then read, instead of N processes decoding the same 60,000 PNGs at once. A failure stops every rank."""
    value, error = distributed.attempt(fn) if distributed.is_main() else (None, None)
    distributed.exchange(None, error)
    if not distributed.is_main():
        value, error = distributed.attempt(fn)
    distributed.exchange(None, error)
    return value


def data_parallel_models(opts: jobs.JobOptions, inputs: jobs.JobInputs) -> jobs.JobModels:
    """jobs.job_models on every rank (training and QAT under DDP); for post-training quantization the INT8 model is
    made here, every rank calibrating its share, so that rank 0 hands the pipeline the model all ranks made."""
    models = jobs.job_models(opts, inputs)
    if models.int8 is None:
        models.calib = list(models.calib)  # calibrated here, then the pipeline's example input
        models.int8 = jobs.ptq_model(models.fp32, models.calib, models.holdout, opts.quantization)
    return models


def world_record() -> dict:
    """metrics.json's pytorch.distributed: how many processes made the models, over which backend."""
    return {"world_size": distributed.world()[1], "backend": dist.get_backend()}
