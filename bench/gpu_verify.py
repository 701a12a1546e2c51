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
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench.generality import write_results
from bench.streaming import Synthetic
from eager2trt.errors import run_cli

COLUMNS = ("device", "images", "seconds", "images_per_second", "peak_rss_mib", "rss_last_tenth_mib", "peak_gpu_mib",
           "fp32", "int8", "export", "exact", "fast", "fp16", "fallback_eval_s", "int8_samples", "gpu_vs_cpu", "checks_passed")


class RssTrace:
    """This process's resident memory every half second while it runs (peak RSS alone cannot tell growth from a
    one-time high), summarized as the highest figure in each tenth of the run."""

    def __init__(self):
        self.samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.wait(0.5):
            with open("/proc/self/statm") as f:
                self.samples.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def tenths(self) -> list:
        n = len(self.samples)
        return [round(max(self.samples[i * n // 10:max((i + 1) * n // 10, i * n // 10 + 1)])) for i in range(10)] \
            if n else []


def child(arch: str, classes: int, size: int, n: int, device: str, sample: int, workers: int, batch: int) -> dict:
    """One run in this process: the pipeline's verification on `n` images on `device`, then FP16 and one
    fallback-study evaluation."""
    from eager2trt.eager.model import build_model
    from eager2trt.graph.onnx_utils import load_onnx
    from eager2trt.graph.sensitivity import Evaluator
    from eager2trt.pipeline import quantize_to_tensorrt, write_fp16

    torch.manual_seed(0)
    model = build_model(arch, classes)
    shape = (3, size, size)
    calib = [torch.randn(32, *shape, generator=torch.Generator().manual_seed(100 + i)) for i in range(4)]
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
    return {"device": device, "images": n, "seconds": seconds, "images_per_second": n / seconds,
            "rss_tenths_mib": trace.tenths(), "rss_last_tenth_mib": trace.tenths()[-1],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device != "cpu" else 0.0,
            **{k: speed[k]["samples_per_second"] for k in ("fp32", "int8", "export", "exact", "fast")},
            "fp16": fp16, "fallback_eval_s": fallback_eval, "int8_samples": result.int8_samples,
            "gpu_vs_cpu": "; ".join(f"{c.value:.2g} <= {c.bound[3:]}" for c in gpu) or "-",
            "checks_passed": f"{sum(c.passed for c in result.checks)}/{len(result.checks)}",
            "throughput": speed, "checks": {c.name: c.as_dict() for c in result.checks if c.name == "gpu_vs_cpu"}}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50", help="torchvision quantizable model (default: resnet50)")
    p.add_argument("--classes", type=int, default=1000, help="classifier width (default: 1000, ImageNet's)")
    p.add_argument("--image-size", type=int, default=224, help="square image size (default: 224)")
    p.add_argument("--runs", nargs="+", default=["cpu:500", "cuda:1000", "cuda:50000"],
                   help="DEVICE:IMAGES per run (default: cpu:500 cuda:1000 cuda:50000)")
    p.add_argument("--sample", type=int, default=1000, help="the CPU sample beside a GPU (default: 1000)")
    p.add_argument("--workers", type=int, default=6, help="DataLoader workers (default: 6)")
    p.add_argument("--batch", type=int, default=250, help="held-out batch size (default: 250)")
    p.add_argument("--output-dir", type=Path, default=Path("bench/results"))
    p.add_argument("--name", default="gpu_verify_h100", help="file stem of the .json and .md")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p


def main(args) -> int:
    if args.child:
        device, n = args.runs[0].rsplit(":", 1)  # cuda:1000 and cuda:1:1000 alike
        print(json.dumps(child(args.arch, args.classes, args.image_size, int(n), device, args.sample, args.workers,
                               args.batch)))
        return 0
    command = " ".join(["python -m bench.gpu_verify", "--arch", args.arch, "--classes", str(args.classes),
                        "--image-size", str(args.image_size), "--runs", *args.runs, "--sample", str(args.sample),
                        "--batch", str(args.batch)])
    rows, text = [], ""
    for run in args.runs:
        cmd = [sys.executable, "-m", "bench.gpu_verify", "--child", "--arch", args.arch, "--classes", str(args.classes),
               "--image-size", str(args.image_size), "--runs", run, "--sample", str(args.sample),
               "--workers", str(args.workers), "--batch", str(args.batch)]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)  # its progress shows on stderr
        if done.returncode:
            raise SystemExit(f"the run {run} failed (exit {done.returncode}; negative: killed by that signal, e.g. -9 "
                             f"out of memory); its error is printed above")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
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
