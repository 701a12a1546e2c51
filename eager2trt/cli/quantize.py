"""Train (or load) ResNet on CIFAR-10, quantize it in eager mode, export FP32/INT8 ONNX and TorchScript."""

import argparse
import time
from pathlib import Path

import torch

from .. import contract
from ..reports import metrics
from ..checks.agreement import print_agreement
from ..artifacts import ensure_writable_dir, output_lock, refuse_overwrite, save_torch, write_json
from ..runtime.backends import PyTorchBackend, evaluate
from ..eager.data import calibration_batches, iterate_batches, load_cifar10
from ..errors import PipelineError, require_choice, require_float, require_int, require_ints, run_cli
from ..eager.model import ARCHS, build_model, load_state_dict
from ..eager.engines import DEFAULT_ENGINE, DRIFTING_ENGINES, select_engine
from ..eager.quantize import ACTIVATION_DTYPES, OBSERVERS
from ..pipeline import QuantizeConfig, quantize_to_tensorrt
from ..reports.plots import plot_training
from ..runtime.timing import environment, measure, thread_sweep
from ..eager.train import check_trained, recipe_from_args, seed_everything, train


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=contract.DATA_DIR,
                   help="CIFAR-10 root: torchvision layout or train/ and test/ image folders")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 through torchvision")
    p.add_argument("--output-dir", type=Path, default=contract.OUTPUT_DIR, help="where every artifact goes")
    p.add_argument("--arch", default="resnet18",
                   help=f"one of {', '.join(ARCHS)} (torchvision's quantizable models; _cifar: stride-1 stem for 32x32)")
    p.add_argument("--checkpoint", type=Path, help="start from this FP32 state_dict and skip training")
    p.add_argument("--epochs", type=int, default=200, help="training epochs (ignored with --checkpoint)")
    p.add_argument("--batch-size", type=int, default=128, help="training and calibration batch size")
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
    p.add_argument("--calibration", default="histogram",
                   help=f"activation observer: {', '.join(OBSERVERS)} (minmax is the reference's)")
    p.add_argument("--calib-batches", type=int, help="calibrate on this many training batches (default: all)")
    p.add_argument("--engine", default=DEFAULT_ENGINE,
                   help=f"quantized CPU engine (onednn, qnnpack, x86, fbgemm); {' and '.join(DRIFTING_ENGINES)} drift "
                        f"from the Q/DQ graph on depthwise models")
    p.add_argument("--latency-runs", type=int, default=200, help="timed batch-1 runs per latency figure")
    p.add_argument("--overwrite", action="store_true",
                   help="let training replace an existing <output-dir>/resnet_cifar10.pt")
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
    require_int("--calib-batches", args.calib_batches)  # with a positive batch size: never zero batches
    require_int("--latency-runs", args.latency_runs)
    require_choice("--arch", args.arch, ARCHS)
    require_choice("--activation-dtype", args.activation_dtype, ACTIVATION_DTYPES)
    require_choice("--calibration", args.calibration, OBSERVERS)
    select_engine(args.engine)
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise PipelineError(f"checkpoint {args.checkpoint} does not exist; pass the path of a saved FP32 state_dict")
    ensure_writable_dir(args.output_dir)
    if args.checkpoint is None:
        refuse_overwrite(args.output_dir / contract.FP32_STATE, args.overwrite)


def get_fp32_model(args, data) -> tuple[torch.nn.Module, dict]:
    """Load the checkpoint, or train with the reference recipe and save the FP32 state_dict."""
    seed_everything(args.seed)  # before build_model: the initial weights come from the seeded generator
    model = build_model(args.arch)
    if args.checkpoint is not None:
        return load_state_dict(model, args.checkpoint, args.arch), {"checkpoint": str(args.checkpoint)}
    recipe = recipe_from_args(args)
    state_path = args.output_dir / contract.TRAIN_STATE
    history = train(model, data["train"], data["test"], recipe, state_path=state_path,
                    save_every=args.save_every, restart=args.restart)
    model.cpu()
    check_trained(model, history, data["test"])
    target = args.output_dir / contract.FP32_STATE
    if target.exists():
        print(f"replacing {target} with the newly trained weights (--overwrite)")
    save_torch(model.state_dict(), target)
    state_path.unlink(missing_ok=True)  # training finished: the resumable state is no longer needed
    if history.epochs:
        write_json(args.output_dir / contract.TRAINING_HISTORY, {"epochs": history.epochs})
        plot_training(history.epochs, args.output_dir / contract.TRAINING_CURVE, title=f"{args.arch} on CIFAR-10")
    return model, {"epochs": history.epochs, "train_seconds": history.train_seconds,
                   "recipe": {k: getattr(recipe, k) for k in recipe.__dataclass_fields__}}


def agreement_batches(data) -> list:
    """The real test images, in the order the accuracy figures use."""
    return [x for x, _ in iterate_batches(data["test"], 500)]


def latencies(fp32, int8, int8_ts, runs: int) -> dict:
    """Batch-1 median latencies in ms: FP32/INT8/TorchScript CPU at 1 and default threads, FP32 CUDA."""
    x = torch.randn(contract.image_batch_shape(1))
    models = (("fp32_cpu", fp32), ("int8_cpu", int8), ("int8_torchscript_cpu", int8_ts))
    with torch.no_grad():
        rows = thread_sweep(lambda threads: [(name, lambda m=m: m(x)) for name, m in models], runs)
        out = {f"{r['label']}_{r['threads']}t": r["median_ms"] for r in rows}
        if torch.cuda.is_available():
            gpu_model, xg = fp32.cuda(), x.cuda()
            out["fp32_cuda"] = measure(lambda: gpu_model(xg), runs=runs, sync=torch.cuda.synchronize)["median_ms"]
            fp32.cpu()
    return out


def main(args) -> dict:
    validate(args)
    with output_lock(args.output_dir):
        return run_stages(args)


def run_stages(args) -> dict:
    """Every stage, with the output folder locked by main."""
    t_start = time.perf_counter()
    data = load_cifar10(args.data_dir, download=args.download)
    fp32, training = get_fp32_model(args, data)
    fp32.eval().cpu()
    config = QuantizeConfig(args.activation_dtype, args.calibration, args.engine)
    result = quantize_to_tensorrt(fp32, calibration_batches(data["train"], args.batch_size, args.calib_batches),
                                  args.output_dir, config,
                                  agreement_inputs=agreement_batches(data))
    print(f"fusion check: max abs difference {result.fusion_max_abs_diff:.3g} (rtol {contract.FUSE_RTOL}, "
          f"atol {contract.FUSE_ATOL}): OK")
    print_agreement(result.agreement)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fp32_acc = evaluate(PyTorchBackend(fp32, device), data["test"]).accuracy
    fp32.cpu()
    int8, int8_ts, fuse_err, agreement = (result.int8, result.int8_torchscript, result.fusion_max_abs_diff,
                                          result.agreement)
    int8_acc = evaluate(PyTorchBackend(int8), data["test"]).accuracy
    lat = latencies(fp32, int8, int8_ts, args.latency_runs)
    report(fp32_acc, int8_acc, lat)
    record = {"arch": args.arch, "fp32_accuracy": fp32_acc, "int8_accuracy": int8_acc,
              "fusion_max_abs_diff": fuse_err, "int8_vs_onnx_agreement": agreement, "latency_batch1_ms": lat,
              "activation_dtype": args.activation_dtype, "engine": torch.backends.quantized.engine,
              "calibration": args.calibration, "calib_batches": args.calib_batches, "seed": args.seed,
              "environment": environment(), "training": training, "wall_seconds": time.perf_counter() - t_start,
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    metrics.update(args.output_dir / contract.METRICS, "pytorch", record)
    print(f"wrote {args.output_dir / contract.METRICS}")
    return record


def report(fp32_acc: float, int8_acc: float, lat: dict) -> None:
    """Print accuracy and latency in the reference's format."""
    print(f"FP32 evaluation accuracy: {fp32_acc:.3f}")
    print(f"INT8 evaluation accuracy: {int8_acc:.3f}")
    for name, ms in lat.items():
        print(f"{name} inference latency: {ms:.2f} ms")


def run() -> None:
    run_cli(lambda: main(get_args_parser().parse_args()))
