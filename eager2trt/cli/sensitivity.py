"""Which quantized layers lose the accuracy: rank every activation and weight quantizer of an INT8 (Q/DQ) ONNX
by what it costs, alone in float and alone quantized, in onnxruntime; with --fallback, keep the fewest of them
in float that bring the graph within --accuracy-budget points of the reference, and write that graph."""

import argparse
from pathlib import Path

from .. import contract
from ..artifacts import ensure_writable_dir, output_lock
from ..runtime.inputs import onnx_input_shape as input_shape
from ..checks.result import require
from ..errors import PipelineError, require_choice, require_float, require_int, run_cli
from ..graph.onnx_utils import is_quantized, load_onnx
from ..jobs import load_data, sized_for_graph
from ..reports.sensitivity import SPLITS, print_run, sensitivity_report
from .data_args import add_data_args, check_data_args, data_options

FALLBACK_ONNX = contract.INT8_ONNX_FALLBACK


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eager2trt-sensitivity", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", type=Path, default=contract.OUTPUT_DIR / contract.INT8_ONNX,
                   help="INT8 Q/DQ ONNX: the export, the TensorRT-ready graph, or your own")
    p.add_argument("--fp32", type=Path, default=None,
                   help="FP32 ONNX of the same model: the reference, and the float weights (without it: the INT8 "
                        "graph with every Q/DQ removed, and weight quantization error is not measured)")
    add_data_args(p, data_dir_default=None,
                  data_help="labelled images for accuracy on a held-out slice: CIFAR-10 or any ImageFolder layout "
                            "(docs/data.md; an image folder is read at the graph's input size unless --image-size); "
                            "without it: random inputs, top-1 agreement and logit error against the reference")
    p.add_argument("--split", default="test", choices=SPLITS,
                   help="split the held-out slice comes from (test: an image folder's val/ or test/) (the last --images of a fixed permutation); "
                        "train only for models that did not train on it: the shipped ResNet18 scores 100%% there")
    p.add_argument("--images", type=int, default=1000, help="evaluation images; the cost is 2 x layers x images")
    p.add_argument("--batch-size", type=int, default=250, help="evaluation batch size")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=None,
                   help="CHW of the random inputs (default: read from the graph's input)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: one per core)")
    p.add_argument("--output-dir", type=Path, default=contract.OUTPUT_DIR,
                   help="where sensitivity.json, sensitivity.md, sensitivity.png (and the fallback graph) go")
    p.add_argument("--accuracy-budget", type=float, default=1.0,
                   help="points below the reference the fallback graph may lose")
    p.add_argument("--fallback", action="store_true",
                   help=f"keep the fewest layers in float within --accuracy-budget and write {FALLBACK_ONNX}")
    p.add_argument("--top", type=int, default=10, help="layers to print (the files hold all)")
    return p


def check_args(args) -> None:
    """Every option checked before any work: one sentence naming the flag."""
    require_int("--images", args.images)
    require_int("--batch-size", args.batch_size)
    require_int("--threads", args.threads, minimum=0)
    require_int("--top", args.top, minimum=0)
    require_float("--accuracy-budget", args.accuracy_budget, 0.0)
    require_choice("--split", args.split, SPLITS)
    if args.input_size is not None:
        for v in args.input_size:
            require_int("--input-size", v)
    for flag, path in (("--input", args.input), ("--fp32", args.fp32)):
        if path is not None and not path.is_file():
            raise PipelineError(f"{flag} {path} does not exist; pass the path of an existing ONNX file")
    check_data_args(args)
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise PipelineError(f"--data-dir {args.data_dir} is not a directory; pass the data folder, or leave "
                            f"--data-dir out for random inputs")


def _graph_input_size(model) -> tuple:
    try:
        return tuple(input_shape(model)[1:])
    except PipelineError:
        raise PipelineError(f"the graph's input {model.graph.input[0].name} has symbolic image dimensions; pass "
                            f"--input-size C H W for the random inputs, or --data-dir") from None


def held_out_data(args, model) -> tuple:
    """The --split split of --data-dir (an image folder at the graph's input size unless --image-size) and its
    description; (None, "") without --data-dir."""
    if args.data_dir is None:
        return None, ""
    data = sized_for_graph(data_options(args), model)
    loaded = load_data(data)
    return loaded[args.split], f"{loaded['kind']} under {args.data_dir}"


def main(args) -> dict:
    check_args(args)
    model = load_onnx(args.input)
    if not is_quantized(model):
        raise PipelineError(f"--input {args.input} has no QuantizeLinear/DequantizeLinear nodes (an FP32 model?); "
                            f"pass the INT8 ONNX as --input and the FP32 one as --fp32")
    fp32 = load_onnx(args.fp32) if args.fp32 is not None else None
    if fp32 is not None and is_quantized(fp32):
        raise PipelineError(f"--fp32 {args.fp32} holds QuantizeLinear/DequantizeLinear nodes; pass the FP32 "
                            f"(unquantized) ONNX as --fp32")
    shape = tuple(args.input_size) if args.input_size else (None if args.data_dir else _graph_input_size(model))
    out = ensure_writable_dir(args.output_dir)
    with output_lock(out):
        data, source = held_out_data(args, model)
        run = sensitivity_report(model, out, fp32=fp32, data=data, data_source=source, split=args.split,
                                 images=args.images, input_shape=shape, batch_size=args.batch_size, threads=args.threads,
                                 budget=args.accuracy_budget,
                                 fallback_path=out / FALLBACK_ONNX if args.fallback else None)
        print_run(run, args.top)
        if run.fallback is not None:
            require(run.fallback.check())
            print(f"wrote {out / FALLBACK_ONNX}")
    return {"sensitivity": run.report.as_dict(), "fallback": run.fallback.as_dict() if run.fallback else None}


def run() -> None:
    run_cli(lambda: main(get_args_parser().parse_args()))


if __name__ == "__main__":
    run()
