"""Validate a TensorRT engine, or an ONNX model in onnxruntime (--onnx), on all CIFAR-10 test images.

Prints the I/O tensors and the accuracy, and holds it to the PyTorch accuracy that resnet_torch.py recorded
in metrics.json (within 0.1 points; a missing record is an error, unless --reference none; a mismatch exits 2). --benchmark
adds a trtexec-style latency summary. There is no automatic fallback: without TensorRT, pass --onnx.
"""

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Optional

from .. import contract
from ..reports import metrics
from ..artifacts import ensure_writable_dir, output_lock, write_json
from ..checks.compare import accuracy_matches
from ..checks.result import Check, require
from ..reports.console import print_checks
from ..runtime.backends import OnnxRunner, TensorRTRunner, evaluate
from ..eager.data import NUM_CLASSES, check_label_set, load_cifar10
from ..graph.onnx_utils import check_interface, load_onnx
from ..stats import same_model_accuracy_check
from ..errors import require_int, run_cli
from ..runtime.timing import environment


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--engine", type=Path, default=None,
                     help=f"TensorRT engine (when neither is given: {contract.OUTPUT_DIR / contract.INT8_ENGINE})")
    src.add_argument("--onnx", type=Path, default=None, help="evaluate this ONNX model in onnxruntime instead")
    p.add_argument("--data-dir", type=Path, default=contract.DATA_DIR, help="CIFAR-10 root")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: the engine profile's largest batch up to 256; 500 for ONNX")
    p.add_argument("--reference", choices=["auto", "int8", "fp32", "none"], default="auto",
                   help="PyTorch accuracy to match within 0.1 points; auto: int8 when the model is quantized "
                        "(Q/DQ nodes or INT8 layers), else fp32")
    p.add_argument("--benchmark", action="store_true", help="also measure latency and throughput")
    p.add_argument("--benchmark-batch", type=int, default=1, help="batch size for --benchmark")
    p.add_argument("--runs", type=int, default=500, help="timed inferences for --benchmark")
    p.add_argument("--metrics", type=Path, default=contract.OUTPUT_DIR / contract.METRICS,
                   help="metrics.json holding the PyTorch accuracy; the result is added to it")
    return p


def print_io(rows: list[dict]) -> None:
    for r in rows:
        print(f"{r['mode']:<6} {r['name']}: shape {r['shape']}, dtype {r['dtype']}, format {r['format']}")


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


def validate(args) -> None:
    """Reject bad options before the evaluation (tens of seconds) starts."""
    require_int("--batch-size", args.batch_size)
    require_int("--runs", args.runs)
    require_int("--benchmark-batch", args.benchmark_batch)
    ensure_writable_dir(args.metrics.parent, "--metrics")
    metrics.check(args.metrics)  # a damaged record fails now, not after the evaluation


def main(args) -> Optional[Check]:
    validate(args)
    with output_lock(args.metrics.parent):
        return run_validation(args)


def run_validation(args) -> Optional[Check]:
    """Evaluate, compare, benchmark, record (the metrics folder locked by main); a failed comparison is recorded,
    then raised as its sentence."""
    if args.onnx is not None:
        runner, model_path = OnnxRunner(args.onnx), args.onnx
    else:
        model_path = args.engine or contract.OUTPUT_DIR / contract.INT8_ENGINE
        runner = TensorRTRunner(model_path)
    which = ("int8" if runner.quantized else "fp32") if args.reference == "auto" else args.reference
    # read the reference before the long evaluation: a missing record fails in a second, not after it
    ref = metrics.PyTorchAccuracy.read(args.metrics).of(which) if which != "none" else None
    if args.onnx is not None:  # what the evaluation feeds and reads, checked before it starts
        check_interface(load_onnx(args.onnx), num_classes=NUM_CLASSES, name=str(args.onnx))
    print_io(runner.describe())
    test = load_cifar10(args.data_dir)["test"]
    check_label_set(test, NUM_CLASSES)
    ev = evaluate(runner, test, args.batch_size or runner.default_batch())
    print(f"{runner.name} accuracy of {model_path.name} on {len(test)} test images: {ev.accuracy:.4f}")
    result = {"backend": runner.name, "model": str(model_path), "accuracy": ev.accuracy, "samples": len(test),
              "quantized": runner.quantized}
    check = None
    if ref is not None:
        check = reference_check(args, runner, ev, test, ref, which)
        result.update(reference=which, reference_accuracy=ref, matches_reference=check.passed, check=check.as_dict())
        print_checks([check])
    if args.benchmark:
        bench = runner.benchmark(args.benchmark_batch, args.runs, tuple(test.images.shape[1:]))
        bench["environment"] = environment()
        write_json(args.metrics.parent / f"benchmark_{runner.name}_{model_path.stem}.json", bench)
        print_benchmark(bench)
        result["benchmark"] = {k: v for k, v in bench.items() if k != "environment"}
    metrics.update(args.metrics, "validation", {model_path.name: result})
    return require(check) if check is not None else None


def reference_check(args, runner, ev, test, ref: float, which: str) -> Check:
    """INT8 against PyTorch INT8: the accuracy difference two computations of one model can show given how often
    they disagree (stats.same_model_accuracy_bound, the agreement recorded by resnet_torch.py); FP32 (and a record
    without agreement): within ACCURACY_MATCH."""
    fix = (f"the {runner.name} model does not reproduce PyTorch {which.upper()}'s accuracy; check that it was built "
           f"from this run's graph")
    recorded = metrics.recorded_agreement(args.metrics) if which == "int8" else None
    if recorded is None:
        return accuracy_matches("accuracy", ev.logits, test.labels, ref, f"PyTorch {which.upper()}", fix=fix)
    agreement, samples = recorded
    check = same_model_accuracy_check(ev.accuracy, ref, agreement, len(test), measured_on=samples)
    return replace(check, fix=fix)


def run() -> None:
    run_cli(lambda: main(get_args_parser().parse_args()))
