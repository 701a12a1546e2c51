"""FP16 ONNX for strongly typed TensorRT (11 has no --fp16): onnxconverter-common, float32 I/O kept."""

import argparse
from pathlib import Path

import onnx

from .. import contract
from ..artifacts import ensure_writable_dir, output_lock, save_onnx
from ..contract import FP16_ACCURACY_TOLERANCE
from ..errors import PipelineError, run_cli
from ..graph.fp16 import refuse_quantized, to_fp16
from ..graph.onnx_utils import load_onnx


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eager2trt.cli.fp16", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", type=Path, default=contract.OUTPUT_DIR / contract.FP32_ONNX, help="FP32 ONNX")
    p.add_argument("--output", type=Path, default=contract.OUTPUT_DIR / contract.FP16_ONNX, help="FP16 ONNX to write")
    p.add_argument("--data-dir", type=Path, help="check FP16 accuracy against FP32 on the CIFAR-10 test set")
    return p


def main(args) -> dict:
    fp32 = load_onnx(args.input)
    refuse_quantized(fp32, args.input)
    ensure_writable_dir(args.output.parent, "--output")
    with output_lock(args.output.parent):
        return convert(fp32, args)


def convert(fp32: onnx.ModelProto, args) -> dict:
    """Convert, check accuracy with --data-dir, then write the checked FP16 model."""
    fp16 = to_fp16(fp32)
    result = {}
    if args.data_dir is not None:
        from ..eager.data import load_cifar10
        from ..checks.compare import ort_accuracy

        test = load_cifar10(args.data_dir)["test"]
        acc32, _ = ort_accuracy(fp32, test)
        acc16, _ = ort_accuracy(fp16, test)
        print(f"accuracy in onnxruntime: FP32 {acc32:.4f}, FP16 {acc16:.4f} (tolerance {FP16_ACCURACY_TOLERANCE:.3f})")
        result = {"fp32_onnx_accuracy": acc32, "fp16_onnx_accuracy": acc16}
        if abs(acc32 - acc16) > FP16_ACCURACY_TOLERANCE:
            raise PipelineError(f"FP16 ONNX accuracy {acc16:.4f} differs from FP32 {acc32:.4f} by more than "
                                f"0.1 points; keep sensitive layers in FP32 (e.g. ModelOpt AutoCast)")
    save_onnx(fp16, args.output)
    print(f"wrote {args.output}")
    return result


def run() -> None:
    run_cli(lambda: main(get_args_parser().parse_args()))


if __name__ == "__main__":
    run()
