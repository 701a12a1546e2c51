"""The CIFAR-10 main job under torchrun (`torchrun --nproc_per_node N resnet_torch.py ...`): jobs.main_job's stages,
the data-parallel ones on every rank, the rest on rank 0.

Every rank: load the data, train (DDP, eager/train.py) or load the FP32 model, calibrate (each rank its share of
the calibration batches, observers merged: eager/distributed.py) or fine-tune with QAT (DDP), and convert; every
rank holds the same INT8 model. Rank 0 only: the output lock, `pipeline.quantize_to_tensorrt` on that INT8 model
(export, graphs, every check on the test images), the FP16 ONNX, latencies and metrics.json. A failure on any rank
ends every rank with the failing rank's sentence (distributed.exchange); run_cli prints it on rank 0 only.
"""

import contextlib
import time
from typing import Iterator, Optional

import torch

from . import jobs
from .artifacts import output_lock
from .contract import ArtifactPaths
from .eager import distributed
from .eager.data import iterate_batches, load_cifar10
from .eager.model import fuse
from .eager.quantize import quantize
from .pipeline import QuantizeConfig, quantize_to_tensorrt, write_fp16
from .reports import metrics
from .runtime.timing import cpu_latencies


@contextlib.contextmanager
def main_rank_lock(output_dir) -> Iterator[None]:
    """The output folder's lock, held by rank 0 for all ranks; a refusal there stops every rank with its sentence."""
    with contextlib.ExitStack() as stack:
        _, error = distributed.attempt(lambda: stack.enter_context(output_lock(output_dir))
                                       if distributed.is_main() else None)
        distributed.exchange(None, error)
        yield


def ptq_model(fp32: torch.nn.Module, calib: list, holdout: Optional[tuple], config: QuantizeConfig) -> torch.nn.Module:
    """Post-training INT8 model, calibrated data-parallel (quantize calibrates through distributed.calibrate): the
    same call the pipeline makes, so rank 0 can pass it on as quantize_to_tensorrt(int8=)."""
    fused, _ = fuse(fp32, tuple(calib[0].shape[1:]))
    return quantize(fused, calib, config.activation_dtype, config.calibration, config.engine, config.percentile,
                    holdout)


def models(opts: jobs.JobOptions) -> tuple:
    """Every rank: data, FP32 model (trained with DDP or loaded), calibration batches, holdout, and the INT8 model
    (PTQ or QAT) with QAT's float twin and record."""
    with distributed.together():
        data = load_cifar10(opts.data_dir, download=opts.download)
    fp32, training = jobs.fp32_model(opts, data)
    calib, holdout = jobs.calibration_data(data["train"], opts)
    calib = list(calib)
    if opts.qat_epochs:
        int8, twin, qat = jobs.qat_model(fp32, calib, holdout, data, opts)
    else:
        int8, twin, qat = ptq_model(fp32, calib, holdout, opts.quantization), None, None
    return data, fp32, training, calib, holdout, int8, twin, qat


def finish(opts: jobs.JobOptions, data: dict, fp32, training: dict, calib: list, holdout, int8, twin, qat,
           t_start: float) -> dict:
    """Rank 0: jobs.main_job's stages after quantization, on the INT8 model all ranks made."""
    paths = ArtifactPaths(opts.output_dir)
    test = data["test"]
    images = [x for x, _ in iterate_batches(test, 500)]
    result = quantize_to_tensorrt(fp32, calib, opts.output_dir, opts.quantization, images=images, labels=test.labels,
                                  fast=opts.fast, accuracy_budget=opts.accuracy_budget, holdout=holdout,
                                  fallback=opts.fallback, int8=int8, float_twin=twin)
    extra = write_fp16(paths.fp32_onnx, paths.fp16_onnx, images, test.labels, result.accuracy["fp32"],
                       "PyTorch FP32") if opts.fp16 else []
    latency = cpu_latencies({"fp32": result.fp32, "int8": result.int8, "int8_torchscript": result.int8_torchscript},
                            images[0][:1], opts.latency_runs)
    record = jobs.record_of(result, opts, training, latency, extra, time.perf_counter() - t_start, qat)
    rank, size = distributed.world()
    record["pytorch"]["distributed"] = {"world_size": size, "backend": torch.distributed.get_backend()
                                        if size > 1 else None}
    for section, values in record.items():
        metrics.update(paths.metrics, section, values)
    return {"result": result, "record": record, "checks": result.checks + extra}


def main_job(opts: jobs.JobOptions) -> Optional[dict]:
    """jobs.main_job across the torchrun ranks (module docstring); rank 0 returns what jobs.main_job returns, the
    other ranks None. One process: jobs.main_job itself."""
    if distributed.world()[1] == 1:
        with output_lock(opts.output_dir):
            return jobs.main_job(opts)
    t_start = time.perf_counter()
    with main_rank_lock(opts.output_dir):
        built = models(opts)
        out, error = distributed.attempt(lambda: finish(opts, *built, t_start)) if distributed.is_main() \
            else (None, None)
        distributed.exchange(None, error)
    return out
