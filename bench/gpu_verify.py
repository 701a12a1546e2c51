"""The whole verification at ImageNet size, CPU beside GPU: quantize_to_tensorrt's checks on N held-out images
with every model evaluated on the CPU (onnxruntime, --device cpu) or on the GPU (--device cuda: FP32 and the
graphs in PyTorch with onnxruntime's Q/DQ arithmetic; PyTorch INT8 and the graphs in onnxruntime on a CPU sample,
check gpu_vs_cpu), then the FP16 ONNX's check on the same images, and one evaluation of the fallback study's
(a graph variant on its held-out training images: the study runs one per layer).

    python -m bench.gpu_verify --arch resnet50 --image-size 224 --runs cpu:500 cuda:1000 cuda:50000

Each run is a fresh process: a torchvision quantizable model with random weights (no pretrained weights travel
here), calibrated on 4 batches of 32, verified on N synthetic images (bench.streaming.Synthetic, a DataLoader
with workers). Reported per run: wall seconds and images/s of the whole verification, peak RSS and peak GPU
memory, each model's own images/s (runner time, outputs back on the CPU), the checks that passed, and the
gpu_vs_cpu figures. Writes OUTPUT_DIR/NAME.{json,md}.
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench.generality import write_results
from bench.streaming import Synthetic, model_and_calibration, run_child, scale_parser
from eager2trt.errors import PipelineError, run_cli

COLUMNS = ("device", "images", "seconds", "images_per_second", "peak_rss_mib", "rss_last_tenth_mib", "peak_gpu_mib",
           "fp32", "int8", "export", "exact", "fast", "fp16", "fallback_eval_s", "int8_samples", "gpu_vs_cpu",
           "checks_passed")


class RssTrace:
    """This process's resident memory every half second while it runs (peak RSS alone cannot tell growth from a
    one-time high), summarized as the highest figure in each tenth of the run."""

    def __init__(self):
        self.samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while True:  # one sample at the start, so even a run shorter than the interval has a figure
            with open("/proc/self/statm") as f:
                self.samples.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20)
            if self._stop.wait(0.5):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def tenths(self) -> list:
        n = len(self.samples)
        ends = [i * n // 10 for i in range(11)]  # a tenth of under one sample takes the sample at its start
        return [round(max(self.samples[a:max(b, a + 1)])) for a, b in zip(ends, ends[1:])]


def child(arch: str, classes: int, size: int, n: int, device: str, sample: int, workers: int, batch: int) -> dict:
    """One run in this process: the pipeline's verification on `n` images on `device`, then FP16 and one
    fallback-study evaluation."""
    from eager2trt.graph.onnx_utils import load_onnx
    from eager2trt.graph.sensitivity import Evaluator
    from eager2trt.pipeline import quantize_to_tensorrt, write_fp16

    model, shape, calib = model_and_calibration(arch, classes, size)
    loader = torch.utils.data.DataLoader(Synthetic(n, shape, classes), batch_size=batch, num_workers=workers,
                                         pin_memory=device != "cpu", persistent_workers=workers > 0)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        with RssTrace() as trace:
            result = quantize_to_tensorrt(model, calib, out, accuracy_budget=100, data=loader, device=device,
                                          sample=sample)
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        write_fp16(result.paths.fp32_onnx, Path(out) / "fp16.onnx", data=loader, device=device)
        fp16 = n / (time.perf_counter() - t1)
        holdout = [torch.randn(250, *shape, generator=torch.Generator().manual_seed(7 + i)).numpy() for i in range(4)]
        evaluator = Evaluator(holdout, device=device)
        export = load_onnx(result.paths.int8_onnx)
        evaluator.logits(export)  # warm-up: the first run converts and loads
        t2 = time.perf_counter()
        evaluator.logits(export)
        fallback_eval = time.perf_counter() - t2
    speed = result.tallies["real"].throughput()
    gpu = [c for c in result.checks if c.name == "gpu_vs_cpu"]
    tenths = trace.tenths()
    return {"device": device, "images": n, "seconds": seconds, "images_per_second": n / seconds,
            "rss_tenths_mib": tenths, "rss_last_tenth_mib": tenths[-1],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device != "cpu" else 0.0,
            **{k: speed[k]["samples_per_second"] for k in ("fp32", "int8", "export", "exact", "fast")},
            "fp16": fp16, "fallback_eval_s": fallback_eval, "int8_samples": result.int8_samples,
            "gpu_vs_cpu": "; ".join(f"{c.value:.2g} <= {c.bound[3:]}" for c in gpu) or "-",
            "checks_passed": f"{sum(c.passed for c in result.checks)}/{len(result.checks)}",
            "throughput": speed, "checks": {c.name: c.as_dict() for c in result.checks if c.name == "gpu_vs_cpu"}}


def get_args_parser() -> argparse.ArgumentParser:
    p = scale_parser(__doc__, "resnet50", 224, "gpu_verify_h100")
    p.add_argument("--runs", nargs="+", default=["cpu:500", "cuda:1000", "cuda:50000"],
                   help="DEVICE:IMAGES per run (default: cpu:500 cuda:1000 cuda:50000)")
    p.add_argument("--sample", type=int, default=1000, help="the CPU sample beside a GPU (default: 1000)")
    p.add_argument("--workers", type=int, default=6, help="DataLoader workers (default: 6)")
    p.add_argument("--batch", type=int, default=250, help="held-out batch size (default: 250)")
    return p


def parse_run(run: str) -> tuple:
    """DEVICE:IMAGES as (device, images): cuda:1000 and cuda:1:1000 alike; one sentence otherwise."""
    device, _, n = run.rpartition(":")
    if not device or not n.isdigit() or int(n) < 1:
        raise PipelineError(f"--runs {run!r} is not DEVICE:IMAGES; pass e.g. cpu:300 cuda:1000 cuda:50000")
    return device, int(n)


def main(args) -> int:
    runs = [parse_run(r) for r in args.runs]  # all of them before the first run starts
    if args.child:
        device, n = runs[0]
        print(json.dumps(child(args.arch, args.classes, args.image_size, n, device, args.sample, args.workers,
                               args.batch)))
        return 0
    command = " ".join(["python -m bench.gpu_verify", "--arch", args.arch, "--classes", str(args.classes),
                        "--image-size", str(args.image_size), "--runs", *args.runs, "--sample", str(args.sample),
                        "--batch", str(args.batch)])
    rows, text = [], ""
    for run in args.runs:
        rows.append(run_child("bench.gpu_verify", ["--arch", args.arch, "--classes", args.classes, "--image-size",
                                                   args.image_size, "--runs", run, "--sample", args.sample,
                                                   "--workers", args.workers, "--batch", args.batch],
                              f"the run {run}"))
        print({k: rows[-1][k] for k in COLUMNS}, flush=True)
        # written after every run, so a long series that is cut off keeps the runs it finished
        text = write_results(args.output_dir, args.name, command, rows, COLUMNS,
                             "(seconds and images_per_second: the whole pipeline run; fp32..fp16: each model's own "
                             "images/s; fallback_eval_s: one graph variant on 1,000 held-out images, the fallback "
                             "study runs one per layer)")
    print(text)
    return 0


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main(get_args_parser().parse_args())))
