"""The project's CIFAR-10 jobs, composed from pipeline calls: the main job (one process) and its first step.

`main_job` trains or loads the FP32 model, runs `pipeline.quantize_to_tensorrt` on the real test images (each
model evaluated once; every check reads those logits), makes the FP16 ONNX and records everything in
metrics.json under the sections the step-by-step scripts write. The CLIs parse flags and call one of these.
"""

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from . import contract
from .artifacts import refuse_overwrite, save_torch, write_json
from .contract import ArtifactPaths
from .eager import distributed
from .eager.calibration import split_training
from .eager.data import calibration_batches, iterate_batches, load_cifar10
from .eager.model import build_model, load_state_dict
from .eager.train import Recipe, check_trained, seed_everything, train
from .pipeline import PipelineResult, QuantizeConfig, quantize_to_tensorrt, write_fp16
from .reports import metrics
from .reports.plots import plot_training
from .runtime.backends import PyTorchRunner, evaluate
from .runtime.timing import cpu_latencies, environment


@dataclass
class JobOptions:
    """Everything a CIFAR-10 job needs to know; the CLI builds it from its flags."""

    data_dir: Path = contract.DATA_DIR
    output_dir: Path = contract.OUTPUT_DIR
    arch: str = "resnet18"
    checkpoint: Optional[Path] = None
    recipe: Recipe = field(default_factory=Recipe)
    # auto: each range method from one pass, the best on held-out training images (docs/quantization.md); 20 batches
    # of 128 random training images: 100 were no better on ResNet18 or MobileNetV2 and cost five times as long
    quantization: QuantizeConfig = field(default_factory=lambda: QuantizeConfig(calibration="auto"))
    calib_batches: Optional[int] = 20  # calibration batches of recipe.batch_size images (None: every image)
    holdout_images: int = 1000  # training images held out of calibration for calibration "auto" to choose on
    accuracy_budget: float = contract.ACCURACY_BUDGET
    fast: Optional[str] = "fp32"  # high precision of the fast graph; None: no fast graph
    fp16: bool = False  # also write and check the FP16 ONNX (the main job)
    # outside the accuracy budget, keep the fewest layers in float (chosen on the held-out training images) and
    # hold that graph to FP32 (pipeline.quantize_to_tensorrt(fallback=True)); needs holdout_images
    fallback: bool = False
    # QAT fine-tuning epochs instead of post-training calibration (eager/qat.py); None: PTQ
    qat_epochs: Optional[int] = None
    latency_runs: int = 200
    download: bool = False
    overwrite: bool = False  # training may replace an existing FP32 state_dict
    save_every: int = 1
    restart: bool = False


def fp32_model(opts: JobOptions, data: dict) -> tuple[torch.nn.Module, dict]:
    """Load the checkpoint, or train with the recipe and save the FP32 state_dict (and its curve)."""
    seed_everything(opts.recipe.seed)  # before build_model: the initial weights come from the seeded generator
    model = build_model(opts.arch)
    if opts.checkpoint is not None:
        return load_state_dict(model, opts.checkpoint, opts.arch), {"checkpoint": str(opts.checkpoint)}
    paths = ArtifactPaths(opts.output_dir)
    refuse_overwrite(paths.fp32_state, opts.overwrite)
    history = train(model, data["train"], data["test"], opts.recipe, state_path=paths.train_state,
                    save_every=opts.save_every, restart=opts.restart)
    model.cpu()
    check_trained(model, history, data["test"])
    if distributed.is_main():  # under torchrun every rank trained the same model (DDP); rank 0 writes it
        _write_fp32(model, history, paths, opts)
    return model, {"epochs": history.epochs, "train_seconds": history.train_seconds, "recipe": asdict(opts.recipe)}


def _write_fp32(model: torch.nn.Module, history, paths: ArtifactPaths, opts: JobOptions) -> None:
    """The trained FP32 state_dict, its history and curve; the resumable state removed (training finished)."""
    if paths.fp32_state.exists():
        print(f"replacing {paths.fp32_state} with the newly trained weights (overwrite)")
    save_torch(model.state_dict(), paths.fp32_state)
    paths.train_state.unlink(missing_ok=True)  # training finished: the resumable state is no longer needed
    if history.epochs:
        write_json(paths.training_history, {"epochs": history.epochs})
        plot_training(history.epochs, paths.training_curve, title=f"{opts.arch} on CIFAR-10")


def calibration_data(train, opts: JobOptions) -> tuple:
    """Calibration batches, and for calibration "auto" or the fallback (batches, labels) of other training images
    to choose on (disjoint from the calibration images)."""
    if opts.quantization.calibration != "auto" and not opts.fallback:
        return calibration_batches(train, opts.recipe.batch_size, opts.calib_batches), None
    size = opts.recipe.batch_size
    calib_images = (opts.calib_batches or -(-(len(train) - opts.holdout_images) // size)) * size
    calib, held = split_training(train, min(calib_images, len(train) - opts.holdout_images), opts.holdout_images)
    batches = [(x, y) for x, y in iterate_batches(held, size)]
    return [x for x, _ in iterate_batches(calib, size)], ([x for x, _ in batches], [y for _, y in batches])


def main_job(opts: JobOptions) -> dict:
    """Train or load, quantize, make TensorRT-ready, verify on the test set, write artifacts and metrics.json."""
    t_start = time.perf_counter()
    paths = ArtifactPaths(opts.output_dir)
    data = load_cifar10(opts.data_dir, download=opts.download)
    fp32, training = fp32_model(opts, data)
    test = data["test"]
    images = [x for x, _ in iterate_batches(test, 500)]
    calib, holdout = calibration_data(data["train"], opts)
    int8, twin, qat = None, None, None
    if opts.qat_epochs:
        calib = list(calib)  # QAT calibrates on them; the pipeline takes its example input from them
        int8, twin, qat = qat_model(fp32, calib, holdout, data, opts)
    result = quantize_to_tensorrt(fp32, calib, opts.output_dir, opts.quantization, images=images, labels=test.labels,
                                  fast=opts.fast, accuracy_budget=opts.accuracy_budget, holdout=holdout,
                                  fallback=opts.fallback, int8=int8, float_twin=twin)
    extra = write_fp16(paths.fp32_onnx, paths.fp16_onnx, images, test.labels, result.accuracy["fp32"],
                       "PyTorch FP32") if opts.fp16 else []
    example = images[0][:1]
    latency = cpu_latencies({"fp32": result.fp32, "int8": result.int8, "int8_torchscript": result.int8_torchscript},
                            example, opts.latency_runs)
    if torch.cuda.is_available():
        latency.update(cpu_latencies({"fp32_cuda": result.fp32.cuda()}, example.cuda(), opts.latency_runs,
                                     sync=torch.cuda.synchronize, threads=False))
        result.fp32.cpu()
    record = record_of(result, opts, training, latency, extra, time.perf_counter() - t_start, qat)
    for section, values in record.items():
        metrics.update(paths.metrics, section, values)
    return {"result": result, "record": record, "checks": result.checks + extra}


def qat_method(fp32: torch.nn.Module, calib: list, holdout: tuple, config: QuantizeConfig) -> str:
    """The observers QAT calibrates with: the job's calibration method; for "auto", the method auto chooses for PTQ
    on the held-out training images (one PTQ pass). Measured (bench/matrix.py qat): ResNet50 from auto's entropy
    reaches 0.6574 against FP32 0.6590, where percentile's PTQ ranges leave it at 0.18."""
    if config.calibration != "auto":
        return config.calibration
    from .eager.model import fuse
    from .eager.quantize import quantize

    fused, _ = fuse(fp32, tuple(calib[0].shape[1:]))
    ptq = quantize(fused, calib, config.activation_dtype, "auto", config.engine, config.percentile, holdout)
    return ptq.calibration_choice["method"]


def qat_model(fp32: torch.nn.Module, calib: list, holdout: Optional[tuple], data: dict,
              opts: JobOptions) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """QAT fine-tune of `fp32` for opts.qat_epochs (eager/qat.py) on the training split, on CUDA when available;
    the test split is only reported after each epoch (train()'s log), never used to choose anything. Returns the
    INT8 model, its float twin and the metrics record."""
    from .eager.qat import qat_recipe, quantize_qat

    method = qat_method(fp32, calib, holdout, opts.quantization)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    recipe = qat_recipe(opts.qat_epochs, batch_size=opts.recipe.batch_size, seed=opts.recipe.seed,
                        train_subset=opts.recipe.train_subset)
    qat = quantize_qat(fp32, calib, data["train"], data["test"], opts.qat_epochs, recipe,
                       opts.quantization.activation_dtype, method, opts.quantization.engine, device)
    history = qat.history
    return qat.int8, qat.float_model, {"epochs": opts.qat_epochs, "calibration": method, "lr": recipe.lr, "device": str(device),
                  "train_subset": recipe.train_subset, "train_seconds": history.train_seconds,
                  "history": history.epochs}


def record_of(result: PipelineResult, opts: JobOptions, training: dict, latency: dict, extra: list,
              seconds: float, qat: Optional[dict] = None) -> dict:
    """metrics.json sections: pytorch (stage 1's figures), onnx_gs / onnx_gs_fast / onnx_gs_fallback (the graphs),
    fp16, validation."""
    pytorch = {"arch": opts.arch, "fp32_accuracy": result.accuracy.get("fp32"),
               "int8_accuracy": result.accuracy.get("int8"), "fusion_max_abs_diff": result.fusion_max_abs_diff,
               "int8_vs_onnx_agreement": result.check("agreement").figures, "latency_batch1_ms": latency,
               "activation_dtype": opts.quantization.activation_dtype, "engine": result.engine,
               "calibration": opts.quantization.calibration, "calib_batches": opts.calib_batches,
               "calibration_choice": getattr(result.int8, "calibration_choice", None),
               "qat_epochs": opts.qat_epochs, "qat": qat, "fallback": opts.fallback,
               "seed": opts.recipe.seed, "environment": environment(), "training": training, "wall_seconds": seconds,
               "checks": {c.name: c.as_dict() for c in result.checks if not c.name.startswith(("exact", "fast", "fallback", "lint"))}}
    record = {"pytorch": pytorch}
    for mode, section in (("exact", "onnx_gs"), ("fast", "onnx_gs_fast"), ("fallback", "onnx_gs_fallback")):
        if mode in result.graphs:
            record[section] = result.graphs[mode].record()
    validation = {}
    for g in result.graphs.values():
        if g.path is not None and g.accuracy is not None:
            ref = "fp32" if g.mode == "fallback" else "int8"  # PyTorch INT8 cannot mirror an ONNX-level fallback
            validation[g.path.name] = {"backend": "onnxruntime", "model": str(g.path), "accuracy": g.accuracy,
                                       "samples": len(result.logits["int8"]["real"]), "quantized": True,
                                       "reference": ref, "reference_accuracy": result.accuracy[ref]}
    if validation:
        record["validation"] = validation
    if extra:
        record["fp16"] = {c.name: c.as_dict() for c in extra}
    return record


def pytorch_reference_logits(torchscript: Path, test) -> tuple:
    """PyTorch INT8 logits on `test` from a saved TorchScript, on the engine chosen for this machine."""
    from .eager.engines import select_engine

    from .eager.torchscript import load_int8_torchscript

    select_engine()  # loading repacks the weights for the current engine: make it the faithful one
    model = load_int8_torchscript(torchscript)
    return evaluate(PyTorchRunner(model), test).logits, f"PyTorch INT8 (TorchScript {Path(torchscript).name})"
