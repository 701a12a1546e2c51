"""Validate a TensorRT engine, or an ONNX model in onnxruntime (--onnx), on all test images: CIFAR-10's, an image
folder's (val/ or test/), or the labelled batches of a data loader script.

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
from ..calib_files import LabelledBatches, check_calibration_paths, load_script_data
from ..heldout import evaluation_batch_size
from ..jobs import DataOptions, class_count, load_data, sized_for_graph
from .data_args import add_data_args, check_data_args, data_options
from ..graph.onnx_utils import check_interface, load_onnx
from ..stats import same_model_accuracy_check
from ..errors import PipelineError, require_int, run_cli
from ..runtime.timing import environment


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--engine", type=Path, default=None,
                     help=f"TensorRT engine (when neither is given: {contract.OUTPUT_DIR / contract.INT8_ENGINE})")
    src.add_argument("--onnx", type=Path, default=None, help="evaluate this ONNX model in onnxruntime instead")
    add_data_args(p)
    p.add_argument("--data-loader-script", default=None, metavar="S.py[:func]",
                   help=f"evaluate on the (feed, labels) pairs that func (default load_data) returns or yields, feed "
                        f"{{'{contract.INPUT_NAME}': float32 NCHW array}} and labels one class index per sample "
                        f"(Polygraphy's convention; docs/data.md), instead of --data-dir")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: the engine profile's largest batch up to 256; for ONNX 500, fewer for large images "
                        "(64 MiB of float32 input: 111 at 224 px)")
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
    check_data_args(args)
    check_calibration_paths(script=args.data_loader_script)
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
    data = data_options(args)
    if args.onnx is not None:  # what the evaluation feeds and reads, checked before it starts
        graph = load_onnx(args.onnx)
        data = sized_for_graph(data, graph)
        classes = None if args.data_loader_script else class_count(data)
        check_interface(graph, num_classes=classes, name=str(args.onnx))
    print_io(runner.describe())
    test = test_data(data, args.data_loader_script)
    batch = args.batch_size or runner.default_batch()
    if args.onnx is not None and not args.batch_size:  # onnxruntime's memory grows with the batch (heldout.py)
        batch = min(batch, evaluation_batch_size(image_shape(test)))
    ev = evaluate(runner, test, batch)
    print(f"{runner.name} accuracy of {model_path.name} on {len(test)} test images: {ev.accuracy:.4f}")
    result = {"backend": runner.name, "model": str(model_path), "accuracy": ev.accuracy, "samples": len(test),
              "quantized": runner.quantized}
    check = None
    if ref is not None:
        check = reference_check(args, runner, ev, test, ref, which)
        result.update(reference=which, reference_accuracy=ref, matches_reference=check.passed, check=check.as_dict())
        print_checks([check])
    if args.benchmark:
        bench = runner.benchmark(args.benchmark_batch, args.runs, image_shape(test))
        bench["environment"] = environment()
        write_json(args.metrics.parent / f"benchmark_{runner.name}_{model_path.stem}.json", bench)
        print_benchmark(bench)
        result["benchmark"] = {k: v for k, v in bench.items() if k != "environment"}
    metrics.update(args.metrics, "validation", {model_path.name: result})
    return require(check) if check is not None else None


def test_data(data: DataOptions, script: Optional[str]):
    """The labelled images to evaluate on: the data loader script's (it must give labels), else the data folder's
    test split."""
    if script is None:
        return load_data(data)["test"]
    given = load_script_data(script)
    if given.labels is None:
        raise PipelineError(f"data loader script {script} gave no labels, so accuracy cannot be measured; yield "
                            f"(feed, labels) pairs, labels one class index per sample, or pass --data-dir instead")
    return LabelledBatches(given.batches, given.labels)


def image_shape(test) -> tuple:
    """CHW of the evaluated images (one batch read)."""
    x, _ = next(iter(test.batches(1)))
    return tuple(x.shape[1:])


def reference_check(args, runner, ev, test, ref: float, which: str) -> Check:
    """INT8 against PyTorch INT8: the accuracy difference two computations of one model can show given how often
    they disagree (stats.same_model_accuracy_bound, the agreement recorded by resnet_torch.py); FP32 (and a record
    without agreement): within ACCURACY_MATCH."""
    fix = (f"the {runner.name} model does not reproduce PyTorch {which.upper()}'s accuracy; check that it was built "
           f"from this run's graph")
    recorded = metrics.recorded_agreement(args.metrics) if which == "int8" else None
    if recorded is None:
        return accuracy_matches("accuracy", ev.accuracy, ev.samples, ref, f"PyTorch {which.upper()}", fix=fix)
    agreement, samples = recorded
    check = same_model_accuracy_check(ev.accuracy, ref, agreement, len(test), measured_on=samples)
    return replace(check, fix=fix)


def run() -> None:
    run_cli(lambda: main(get_args_parser().parse_args()))
