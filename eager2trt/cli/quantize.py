"""Train (or load) a model on CIFAR-10 or any image folder, quantize it in eager mode, export FP32/INT8 ONNX and TorchScript, and make
and verify the TensorRT-ready Q/DQ graphs (exact and fast) on the real test images.

With --fp16-onnx it is the whole main job before the engines: the FP16 ONNX is written and checked too.
Under torchrun (`torchrun --nproc_per_node N resnet_torch.py ...`) it runs data-parallel: every rank trains,
calibrates or fine-tunes, rank 0 alone makes and writes the artifacts (docs/distributed.md).
"""

import argparse
from pathlib import Path
from typing import Optional

import torch.distributed

from .. import contract, jobs, parallel_job
from ..artifacts import ensure_writable_dir, output_lock, refuse_overwrite, refuse_same_file
from ..calib_files import check_calibration_paths
from ..eager.engines import AUTO, candidate_engines, supported_engines
from ..eager.model import ARCHS
from ..eager import distributed
from ..eager.calibration import DEFAULT_PERCENTILE, check_percentile
from ..eager.quantize import ACTIVATION_DTYPES, CALIBRATIONS
from ..eager.train import Recipe
from ..errors import PipelineError, require_choice, require_float, require_int, require_ints, run_cli
from .data_args import add_calibration_file_args, add_data_args, check_data_args, data_options
from ..graph.placement import HIGH_PRECISIONS
from ..pipeline import QuantizeConfig, resolve_device
from ..reports.console import print_checks, print_graph, print_latencies


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_args(p)
    p.add_argument("--output-dir", type=Path, default=contract.OUTPUT_DIR, help="where every artifact goes")
    p.add_argument("--arch", default="resnet18",
                   help=f"one of {', '.join(ARCHS)} (torchvision's quantizable models; _cifar: stride-1 stem for 32x32)")
    p.add_argument("--model", default=None, metavar="MODULE:FACTORY",
                   help="your own model instead of --arch: module:function or path/file.py:function returning the FP32 "
                        "model (QuantStub/DeQuantStub, fuse_model()), given num_classes= when it takes it")
    p.add_argument("--name", default=None,
                   help="artifact name: NAME.pt, NAME.onnx, NAME_quantized*.onnx (default: the reference's "
                        "resnet_cifar10 names for ResNet18 on CIFAR-10, else the arch or the factory's name)")
    p.add_argument("--checkpoint", type=Path, help="start from this FP32 state_dict and skip training")
    add_calibration_file_args(p)
    p.add_argument("--epochs", type=int, default=200, help="training epochs (ignored with --checkpoint)")
    p.add_argument("--batch-size", type=int, default=128,
                   help="training and calibration batch size (training's is per process under torchrun)")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay")
    p.add_argument("--milestones", type=int, nargs="+", default=[100, 150], help="MultiStepLR epochs")
    p.add_argument("--seed", type=int, default=0, help="seeds weight initialisation, shuffling and augmentation")
    p.add_argument("--save-every", type=int, default=1, help="write the resumable training state every N epochs")
    p.add_argument("--train-subset", type=int, help="train on this many images only (short CPU runs)")
    p.add_argument("--no-fast", action="store_true",
                   help="on CUDA, train in plain FP32 eager mode (no channels_last, bf16, compile)")
    p.add_argument("--compile-mode", default="reduce-overhead",
                   help="torch.compile mode for CUDA training; 'none' to run eagerly")
    p.add_argument("--activation-dtype", default="quint8", help=f"one of {', '.join(ACTIVATION_DTYPES)}")
    defaults = jobs.JobOptions()
    p.add_argument("--calibration", default=defaults.quantization.calibration,
                   help=f"activation range method: {', '.join(CALIBRATIONS)} (minmax is the reference's; auto picks per "
                        f"model by accuracy on held-out training images)")
    p.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE,
                   help="percentile of |activation| for --calibration percentile (and auto's percentile candidate)")
    p.add_argument("--calib-batches", type=int, default=defaults.calib_batches,
                   help="calibrate on this many batches of random training images; 0: all, in stored order")
    p.add_argument("--engine", default=AUTO,
                   help=f"quantized CPU engine: {AUTO} (the first of onednn, qnnpack whose int8 arithmetic matches the "
                        f"Q/DQ graph on this CPU, measured by a probe) or one of {', '.join(supported_engines())}")
    p.add_argument("--device", default=defaults.device,
                   help="where FP32 and the graphs are evaluated: cpu (onnxruntime), cuda[:N] (PyTorch, with "
                        "onnxruntime's Q/DQ arithmetic, checked against the CPU on --cpu-sample samples) or auto "
                        "(cuda where there is one)")
    p.add_argument("--cpu-sample", type=int, default=defaults.cpu_sample,
                   help="with a GPU: the held-out samples PyTorch INT8 (CPU-only engines) and the graphs in "
                        "onnxruntime run on; the INT8 checks are measured there, with FP32 on the same samples")
    p.add_argument("--accuracy-budget", type=float, default=contract.ACCURACY_BUDGET,
                   help="fail when INT8 (PyTorch or a TensorRT-ready graph) is more than this many points of top-1 "
                        "below FP32 on the test images")
    p.add_argument("--fallback", action="store_true",
                   help=f"when INT8 is outside --accuracy-budget, keep the fewest layers in float (chosen on "
                        f"{defaults.holdout_images} held-out training images, never the test set) and write "
                        f"<name>_quantized_fallback.onnx ({contract.INT8_ONNX_FALLBACK} for ResNet18 on CIFAR-10), held "
                        f"to FP32 within the budget on the test images")
    p.add_argument("--qat-epochs", type=int, default=None,
                   help="quantization-aware fine-tuning for this many epochs (1 or more; CUDA when available) "
                        "instead of post-training calibration; QAT's observers use --calibration, or for auto the "
                        "method auto chooses for PTQ; unset: post-training quantization")
    p.add_argument("--int8-model", type=Path,
                   help="a converted INT8 eager model of --checkpoint, saved whole with torch.save(model) (unpickled: "
                        "only files you trust), used instead of calibrating; affine activations (torch.ao's default "
                        "qconfigs) are re-derived in TensorRT's symmetric scheme and the error it adds is checked")
    p.add_argument("--high-precision", default="fp32", choices=HIGH_PRECISIONS,
                   help="type of the fast graph's scales, biases and non-INT8 compute")
    p.add_argument("--no-fast-graph", action="store_true", help="write only the exact TensorRT-ready graph")
    p.add_argument("--fp16-onnx", action="store_true", help="also write the FP16 ONNX and hold it to FP32's accuracy "
                                                              "(the main job does)")
    p.add_argument("--latency-runs", type=int, default=200, help="timed batch-1 runs per latency figure")
    p.add_argument("--overwrite", action="store_true",
                   help="let training replace an existing FP32 state_dict (<output-dir>/resnet_cifar10.pt, or <name>.pt)")
    p.add_argument("--restart", action="store_true",
                   help="move an interrupted run's training state aside (kept) and train from scratch")
    return p


def validate(args) -> None:
    """Reject bad options before any long work starts."""
    require_int("--epochs", args.epochs, minimum=0)
    if args.epochs == 0 and args.checkpoint is None:
        raise PipelineError("--epochs 0 would save an untrained model; pass --epochs 1 or more, or --checkpoint "
                            "to start from saved weights")
    require_int("--batch-size", args.batch_size)
    require_float("--lr", args.lr, inclusive=False)
    require_float("--momentum", args.momentum)
    require_float("--weight-decay", args.weight_decay)
    require_ints("--milestones", args.milestones)
    require_int("--seed", args.seed, minimum=0, maximum=2**32 - 1)  # NumPy's seed range
    require_int("--save-every", args.save_every)
    require_int("--train-subset", args.train_subset)
    require_int("--calib-batches", args.calib_batches, minimum=0)  # 0: every training image
    require_int("--latency-runs", args.latency_runs)
    require_int("--cpu-sample", args.cpu_sample)
    resolve_device(args.device, "--device is")
    require_int("--qat-epochs", args.qat_epochs)  # unset (None): PTQ; 0 or less is refused
    require_float("--accuracy-budget", args.accuracy_budget)
    require_choice("--arch", args.arch, ARCHS)
    check_data_args(args)
    check_model_args(args)
    require_choice("--activation-dtype", args.activation_dtype, ACTIVATION_DTYPES)
    require_choice("--calibration", args.calibration, CALIBRATIONS)
    check_percentile(args.percentile)
    require_choice("--engine", args.engine, (AUTO, *supported_engines()))
    candidate_engines(args.engine)  # says now when no engine is faithful on this machine
    if args.int8_model is not None and (args.checkpoint is None or args.qat_epochs):
        raise PipelineError("--int8-model needs --checkpoint, the FP32 state_dict it was converted from (its float "
                            "twin), and replaces calibration and QAT; drop --qat-epochs")
    if args.int8_model is not None and not args.int8_model.is_file():
        raise PipelineError(f"--int8-model {args.int8_model} does not exist; pass a file written by "
                            f"torch.save(int8_model)")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise PipelineError(f"checkpoint {args.checkpoint} does not exist; pass the path of a saved FP32 state_dict")
    ensure_writable_dir(args.output_dir)
    written = jobs.artifact_paths(options(args))
    if args.checkpoint is None:
        refuse_overwrite(written.fp32_state, args.overwrite)
    else:
        refuse_same_file({"--checkpoint": args.checkpoint},
                         {name: getattr(written, name) for name in ("fp32_onnx", "int8_onnx", "int8_torchscript",
                                                                   "int8_onnx_modified", "int8_onnx_fast",
                                                                   "int8_onnx_fallback", "metrics")},
                         overwrite=args.overwrite, overwrite_hint="pass --overwrite")


def check_model_args(args) -> None:
    """--model, --name, --calib-data and --data-loader-script, before any work: one sentence naming the flag."""
    if args.model is not None and ":" not in args.model:
        raise PipelineError(f"--model {args.model} names no factory; pass module:function or path/file.py:function, "
                            f"e.g. my_models.py:make_net")
    if args.name is not None:
        contract.check_name(args.name)
    if args.calib_data is not None and args.data_loader_script is not None:
        raise PipelineError("--calib-data and --data-loader-script both give calibration data; pass one of them")
    check_calibration_paths(args.calib_data, args.data_loader_script)


def options(args) -> jobs.JobOptions:
    """The job these flags describe."""
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                    weight_decay=args.weight_decay, milestones=tuple(args.milestones), seed=args.seed,
                    train_subset=args.train_subset, fast=not args.no_fast,
                    compile_mode=None if args.compile_mode == "none" else args.compile_mode)
    return jobs.JobOptions(data=data_options(args), output_dir=args.output_dir, arch=args.arch, model=args.model,
                           name=args.name, checkpoint=args.checkpoint, calib_data=args.calib_data,
                           data_loader_script=args.data_loader_script, recipe=recipe,
                           quantization=QuantizeConfig(args.activation_dtype, args.calibration, args.engine,
                                                        args.percentile),
                           calib_batches=args.calib_batches or None, accuracy_budget=args.accuracy_budget,
                           fast=None if args.no_fast_graph else args.high_precision, fp16=args.fp16_onnx,
                           fallback=args.fallback, qat_epochs=args.qat_epochs, int8_model=args.int8_model,
                           latency_runs=args.latency_runs, overwrite=args.overwrite, device=args.device,
                           cpu_sample=args.cpu_sample,
                           save_every=args.save_every, restart=args.restart)


def report(out: dict) -> None:
    """Checks, graphs, accuracies in the reference's format, latencies."""
    result = out["result"]
    print("checks:")
    # the model's own checks (every graph's are printed with its graph); scale provenance can stop a run too
    model_checks = [c for g in result.graphs.values() for c in g.checks]
    print_checks([c for c in result.checks if all(c is not g for g in model_checks)])
    for graph in result.graphs.values():
        print_graph(graph)
    for note in result.notes:
        print(f"note: {note}")
    if out["checks"][len(result.checks):]:
        print("FP16 ONNX:")
        print_checks(out["checks"][len(result.checks):])
    qat = out["record"]["pytorch"].get("qat")
    if qat:
        print(f"QAT: {qat['epochs']} epochs ({qat['calibration']} observers, lr {qat['lr']:g}, {qat['device']}, "
              f"{qat['train_seconds']:.1f} s)")
    print(f"FP32 evaluation accuracy: {result.accuracy['fp32']:.3f}")
    print(f"INT8 evaluation accuracy: {result.accuracy['int8']:.3f}")
    for mode, graph in result.graphs.items():
        if graph.accuracy is not None:
            print(f"{mode} graph accuracy (onnxruntime): {graph.accuracy:.4f}")
    print_latencies(out["record"]["pytorch"]["latency_batch1_ms"])
    print(f"wrote {result.paths.metrics}")


def main(args) -> dict:
    validate(args)  # under torchrun every rank checks the same flags: a refusal is the same sentence on each
    if distributed.launched_by_torchrun():
        out = data_parallel(options(args))
    else:
        with output_lock(args.output_dir):
            out = jobs.main_job(options(args))
    if out is None:
        return {}  # a rank other than 0 under torchrun: rank 0 reports
    report(out)
    return out["record"]


def data_parallel(opts: jobs.JobOptions) -> Optional[dict]:
    """The main job over torchrun's ranks (parallel_job.py) in a process group made from torchrun's variables: gloo
    on CPU, nccl with each rank on cuda:LOCAL_RANK on GPUs."""
    distributed.init_from_env()
    try:
        return parallel_job.main_job(opts)
    finally:
        # on failure too: exiting with gloo's threads alive can abort the process (std::terminate) after its sentence
        torch.distributed.destroy_process_group()


def run() -> None:
    run_cli(lambda: main(get_args_parser().parse_args()))
