"""Validate a TensorRT engine (or, where TensorRT is absent, the ONNX model in onnxruntime) on CIFAR-10.

Evaluates all 10,000 test images, prints the I/O tensors and the accuracy, compares it with the
PyTorch accuracy recorded by resnet_torch.py, and with --benchmark prints a trtexec-style summary.
"""

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from eager2trt import paths
from eager2trt.artifacts import ensure_writable_dir, output_lock, update_metrics, write_json
from eager2trt.data import iterate_batches, load_cifar10
from eager2trt.errors import require_int, run_cli
from eager2trt.timing import environment, measure, summarize

MATCH_TOLERANCE = 0.001  # 0.1 points of accuracy


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--engine", type=Path, help=f"TensorRT engine (default: {paths.OUTPUT_DIR / paths.INT8_ENGINE})")
    src.add_argument("--onnx", type=Path, help="evaluate this ONNX model in onnxruntime instead of an engine")
    p.add_argument("--data-dir", type=Path, default=paths.DATA_DIR, help="CIFAR-10 root")
    p.add_argument("--batch-size", type=int, help="default: the engine profile's largest batch up to 256; 500 for ONNX")
    p.add_argument("--reference", choices=["auto", "int8", "fp32", "none"], default="auto",
                   help="PyTorch accuracy to match within 0.1 points; auto: int8 for quantized models")
    p.add_argument("--benchmark", action="store_true", help="also measure latency and throughput")
    p.add_argument("--benchmark-batch", type=int, default=1, help="batch size of the --benchmark inferences")
    p.add_argument("--runs", type=int, default=500, help="timed inferences for --benchmark")
    p.add_argument("--metrics", type=Path, default=paths.OUTPUT_DIR / paths.METRICS,
                   help="metrics JSON to read and update")
    return p


class OnnxBackend:
    """onnxruntime (CPU) with full graph optimizations, as a deployment would run it."""

    name = "onnxruntime"

    def __init__(self, path: Path):
        from eager2trt.surgery import load_onnx
        from eager2trt.verify import ort_session

        model = load_onnx(path)
        self.quantized = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
        self.session = ort_session(model, optimize=True)
        self.input = self.session.get_inputs()[0].name

    def describe(self) -> list[dict]:
        return [{"name": t.name, "mode": mode, "shape": t.shape, "dtype": t.type, "format": "NCHW (linear)"}
                for mode, ts in (("input", self.session.get_inputs()), ("output", self.session.get_outputs()))
                for t in ts]

    def default_batch(self) -> int:
        return 500

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: x.numpy()})[0])

    def benchmark(self, batch: int, runs: int) -> dict:
        x = torch.randn(batch, 3, 32, 32)
        return measure(lambda: self(x), runs=runs, warmup=20, batch_size=batch)


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, path: Path):
        from eager2trt.tensorrt_runtime import Engine

        self.engine = Engine(path)
        self.quantized = "int8" in path.name

    def describe(self) -> list[dict]:
        return self.engine.describe()

    def default_batch(self) -> int:
        return min(self.engine.batch_range()[1], 256)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine(x.cuda(non_blocking=True)).cpu()

    def benchmark(self, batch: int, runs: int) -> dict:
        """Host latency split as trtexec does: H2D, GPU compute (CUDA events), D2H."""
        host = torch.randn(batch, 3, 32, 32).pin_memory()
        dev = host.cuda()
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        h2d, compute, d2h, total = [], [], [], []
        for i in range(runs + 20):
            ev[0].record()
            dev.copy_(host, non_blocking=True)
            ev[1].record()
            out = self.engine(dev)
            ev[2].record()
            out.cpu()
            ev[3].record()
            torch.cuda.synchronize()
            if i >= 20:
                h2d.append(ev[0].elapsed_time(ev[1]))
                compute.append(ev[1].elapsed_time(ev[2]))
                d2h.append(ev[2].elapsed_time(ev[3]))
                total.append(ev[0].elapsed_time(ev[3]))
        return {**summarize(total, batch), "gpu_compute": summarize(compute, batch),
                "h2d": summarize(h2d, batch), "d2h": summarize(d2h, batch)}


def evaluate(backend, split, batch_size: int) -> float:
    correct = 0
    for x, y in tqdm(iterate_batches(split, batch_size), total=-(-len(split) // batch_size),
                     desc=backend.name, unit="batch"):
        correct += int((backend(x).argmax(1) == y).sum())
    return correct / len(split)


def reference_accuracy(metrics_path: Path, which: str):
    """The PyTorch accuracy resnet_torch.py recorded, or None when there is none."""
    try:
        pytorch = json.loads(metrics_path.read_text())["pytorch"]
    except (OSError, KeyError, json.JSONDecodeError):
        return None
    return pytorch.get(f"{which}_accuracy")


def print_io(rows: list[dict]) -> None:
    for r in rows:
        print(f"{r['mode']:<6} {r['name']}: shape {r['shape']}, dtype {r['dtype']}, format {r['format']}")


def validate(args) -> None:
    """Reject bad options before the evaluation (tens of seconds) starts."""
    require_int("--batch-size", args.batch_size)
    require_int("--runs", args.runs)
    require_int("--benchmark-batch", args.benchmark_batch)
    ensure_writable_dir(args.metrics.parent, "--metrics")


def main(args) -> int:
    validate(args)
    with output_lock(args.metrics.parent):
        return run(args)


def run(args) -> int:
    """Evaluate, compare, benchmark, record (the metrics folder locked by main)."""
    if args.onnx is not None:
        backend, model_path = OnnxBackend(args.onnx), args.onnx
    else:
        model_path = args.engine or paths.OUTPUT_DIR / paths.INT8_ENGINE
        backend = TensorRTBackend(model_path)
    print_io(backend.describe())
    test = load_cifar10(args.data_dir)["test"]
    accuracy = evaluate(backend, test, args.batch_size or backend.default_batch())
    print(f"{backend.name} accuracy of {model_path.name} on {len(test)} test images: {accuracy:.4f}")
    which = ("int8" if backend.quantized else "fp32") if args.reference == "auto" else args.reference
    result = {"backend": backend.name, "model": str(model_path), "accuracy": accuracy, "samples": len(test)}
    status = 0
    ref = reference_accuracy(args.metrics, which) if which != "none" else None
    if ref is not None:
        matches = abs(accuracy - ref) <= MATCH_TOLERANCE
        result.update(reference=which, reference_accuracy=ref, matches_reference=matches)
        print(f"{'matches' if matches else 'DOES NOT match'} PyTorch {which.upper()} accuracy {ref:.4f} "
              f"within 0.1 points (difference {100 * (accuracy - ref):+.2f} points)")
        status = 0 if matches else 1
    if args.benchmark:
        bench = backend.benchmark(args.benchmark_batch, args.runs)
        bench["environment"] = environment()
        out = args.metrics.parent / f"benchmark_{backend.name}_{model_path.stem}.json"
        write_json(out, bench)
        print_benchmark(bench)
        result["benchmark"] = {k: v for k, v in bench.items() if k != "environment"}
    update_metrics(args.metrics, "validation", {model_path.name: result})
    return status


def print_benchmark(b: dict) -> None:
    print(f"=== Performance summary (batch {b['batch_size']}, {b['runs']} runs) ===")
    print(f"Throughput: {b['throughput_per_s']:.1f} qps")
    print(f"Latency: min = {b['min_ms']:.4f} ms, max = {b['max_ms']:.4f} ms, mean = {b['mean_ms']:.4f} ms, "
          f"median = {b['median_ms']:.4f} ms, percentile(90%) = {b['p90_ms']:.4f} ms, "
          f"percentile(95%) = {b['p95_ms']:.4f} ms, percentile(99%) = {b['p99_ms']:.4f} ms")
    for key, label in (("h2d", "H2D Latency"), ("gpu_compute", "GPU Compute Time"), ("d2h", "D2H Latency")):
        if key in b:
            s = b[key]
            print(f"{label}: min = {s['min_ms']:.4f} ms, mean = {s['mean_ms']:.4f} ms, median = {s['median_ms']:.4f} ms,"
                  f" percentile(99%) = {s['p99_ms']:.4f} ms")


def raise_status(code: int) -> None:
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    run_cli(lambda: raise_status(main(get_args_parser().parse_args())))
