"""Make an INT8 Q/DQ ONNX (from resnet_torch.py, or your own PyTorch INT8 export) TensorRT-ready and prove it.

Rewrites by graph pattern, then lints the result against TensorRT's explicit-quantization rules and checks in
onnxruntime that it computes the same logits as the original (--mode exact), or (--mode fast: the Q/DQ placement
TensorRT fuses best) that it keeps PyTorch INT8's accuracy. resnet_torch.py already writes both graphs; this
command is the reference's second step, and the way in for an INT8 ONNX made elsewhere.
"""

import argparse
from pathlib import Path
from typing import Optional

from .. import contract, jobs, pipeline
from ..artifacts import check_complete, ensure_writable_dir, output_lock, refuse_same_file
from ..contract import EQUIVALENCE_ATOL
from ..eager.torchscript import load_int8_torchscript
from ..heldout import SplitBatches
from .data_args import add_data_args, check_data_args, data_options
from ..errors import PipelineError, require_choice, require_float, run_cli
from ..graph.onnx_utils import check_interface, load_onnx, output_width
from ..graph.placement import HIGH_PRECISIONS
from ..reports import metrics
from ..reports.console import print_graph

FP16_LOSS_NOTE = ("onnxruntime runs QuantizeLinear on FP16 inputs in FP16 arithmetic, which TensorRT's fused INT8 "
                  "kernels need not do, so a loss measured here may not exist in an engine")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", type=Path, default=contract.OUTPUT_DIR / contract.INT8_ONNX,
                   help="Q/DQ ONNX from resnet_torch.py (or your own PyTorch INT8 export)")
    p.add_argument("--output", type=Path, help=f"when omitted: {contract.OUTPUT_DIR / contract.INT8_ONNX_MODIFIED} "
                                                f"(exact), {contract.OUTPUT_DIR / contract.INT8_ONNX_FAST} (fast)")
    p.add_argument("--mode", default="exact", choices=pipeline.MODES,
                   help="exact: the export's arithmetic bit for bit; fast: also move and drop Q/DQ so TensorRT fuses "
                        "Conv+Add+ReLU (held to PyTorch INT8 accuracy instead of bit-exactness)")
    p.add_argument("--high-precision", default="fp32", choices=HIGH_PRECISIONS,
                   help="fast mode: type of scales, biases and non-INT8 compute (fp16: opset 19, float32 I/O kept)")
    add_data_args(p, data_dir_default=None,
                  data_help="also check on real test images (exact: equivalence; fast: accuracy against PyTorch "
                            "INT8): CIFAR-10 or any torchvision ImageFolder (read at the graph's input size unless "
                            "--image-size says otherwise; docs/data.md)")
    p.add_argument("--fp32", type=Path, help="fast mode: FP32 ONNX whose unrounded biases the fast graph carries, "
                                             "and without --data-dir the reference of the random-input error check "
                                             f"(when omitted: {contract.FP32_ONNX} beside --input when it is named "
                                             f"{contract.INT8_ONNX})")
    p.add_argument("--torchscript", type=Path, help="fast mode: PyTorch INT8 TorchScript, the accuracy reference "
                                                    f"(when omitted: {contract.INT8_TORCHSCRIPT} beside --input when it is "
                                                    f"named {contract.INT8_ONNX}, else the input graph's own logits)")
    p.add_argument("--no-verify", action="store_true", help="skip the lint and the equivalence/accuracy checks")
    p.add_argument("--allow-fp32", action="store_true", help="pass a graph with no Q/DQ through instead of failing")
    p.add_argument("--atol", type=float, default=EQUIVALENCE_ATOL, help="equivalence bound on max abs difference")
    p.add_argument("--metrics", type=Path, default=contract.OUTPUT_DIR / contract.METRICS, help="metrics JSON to update")
    return p


def output_path(args) -> Path:
    return args.output or contract.OUTPUT_DIR / (contract.INT8_ONNX_FAST if args.mode == "fast"
                                                 else contract.INT8_ONNX_MODIFIED)


def beside_input(args, given: Optional[Path], name: str) -> Optional[Path]:
    """`given`, else the reference-named artifact `name` next to --input when that exists."""
    if given is not None:
        if not given.is_file():
            raise PipelineError(f"{given} does not exist; pass an existing file or leave the flag out")
        return given
    candidate = args.input.parent / name
    return candidate if args.input.name == contract.INT8_ONNX and candidate.is_file() else None


def validate(args) -> None:
    """Reject bad options before any work starts."""
    require_choice("--mode", args.mode, pipeline.MODES)
    if args.mode == "exact" and args.high_precision != "fp32":
        raise PipelineError("--high-precision fp16 needs --mode fast: exact mode keeps the export's float32 "
                            "arithmetic bit for bit")
    require_float("--atol", args.atol)
    if args.data_dir is not None:
        check_data_args(args)
    refuse_same_file({"--input": args.input, "--fp32": args.fp32, "--torchscript": args.torchscript},
                     {"--output": output_path(args), "--metrics": args.metrics})
    ensure_writable_dir(output_path(args).parent, "--output")
    ensure_writable_dir(args.metrics.parent, "--metrics")
    metrics.check(args.metrics)  # a damaged record fails now, not after the evaluation
    check_complete(args.input.parent)
    if args.torchscript is not None:
        load_int8_torchscript(args.torchscript)  # says what the file is when it is no INT8 TorchScript


def main(args) -> pipeline.Graph:
    validate(args)
    with output_lock(output_path(args).parent, args.metrics.parent):
        graph = rewrite(args)
        print_graph(graph)
        if args.mode == "fast" and args.high_precision == "fp16" and args.data_dir is not None:
            print(f"  ({FP16_LOSS_NOTE})")
        section = "onnx_gs" if args.mode == "exact" else f"onnx_gs_fast{'_fp16' if args.high_precision == 'fp16' else ''}"
        metrics.update(args.metrics, section, {**graph.record(), "input": str(args.input)})
    return graph


def rewrite(args) -> pipeline.Graph:
    """Gather what the checks need (test images, the PyTorch reference, the FP32 ONNX) and make one call."""
    evaluation = reference = None
    fast = args.mode == "fast"
    original = load_onnx(args.input)
    if args.data_dir is not None and not args.no_verify:
        data = jobs.sized_for_graph(data_options(args), original)
        check_interface(original, num_classes=jobs.class_count(data), name=str(args.input))
        evaluation = SplitBatches(jobs.load_data(data)["test"])  # streamed, read on each pass
        torchscript = beside_input(args, args.torchscript, contract.INT8_TORCHSCRIPT) if fast else None
        reference = jobs.pytorch_reference(torchscript) if torchscript else None
    fp32 = beside_input(args, args.fp32, contract.FP32_ONNX) if fast else None  # float biases; the error ratio
    if fp32 is not None:
        check_interface(load_onnx(fp32), num_classes=output_width(original), name=str(fp32))
    return pipeline.rewrite_onnx(args.input, output_path(args), args.mode, args.high_precision, data=evaluation,
                                 fp32_onnx=fp32, reference=reference, allow_fp32=args.allow_fp32,
                                 verify=not args.no_verify, atol=args.atol)


def run() -> None:
    run_cli(lambda: main(get_args_parser().parse_args()))
