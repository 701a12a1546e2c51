"""FP16 ONNX for strongly typed TensorRT (11 has no --fp16): onnxconverter-common, float32 I/O kept.

With --data-dir, the FP16 model's top-1 on the CIFAR-10 test set is held to the FP32 ONNX's within 0.1 points
before anything is written.
"""

import argparse
from pathlib import Path

from .. import contract, pipeline
from ..artifacts import ensure_writable_dir, output_lock
from ..eager.data import iterate_batches, load_cifar10
from ..errors import run_cli
from ..reports.console import print_checks


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eager2trt.cli.fp16", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", type=Path, default=contract.OUTPUT_DIR / contract.FP32_ONNX, help="FP32 ONNX")
    p.add_argument("--output", type=Path, default=contract.OUTPUT_DIR / contract.FP16_ONNX, help="FP16 ONNX to write")
    p.add_argument("--data-dir", type=Path, help="check FP16 accuracy against FP32 on the CIFAR-10 test set")
    return p


def main(args) -> list:
    ensure_writable_dir(args.output.parent, "--output")
    images = labels = None
    if args.data_dir is not None:
        test = load_cifar10(args.data_dir)["test"]
        images, labels = [x for x, _ in iterate_batches(test, 500)], test.labels
    with output_lock(args.output.parent):
        checks = pipeline.write_fp16(args.input, args.output, images, labels)
    print_checks(checks)
    print(f"wrote {args.output}")
    return checks


def run() -> None:
    run_cli(lambda: main(get_args_parser().parse_args()))


if __name__ == "__main__":
    run()
