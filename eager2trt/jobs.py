"""The project's jobs, composed from pipeline calls: the main job (one process) and its first step, on CIFAR-10 (the
default, decoded once and cached) or any torchvision ImageFolder data set (eager/folders.py).

`main_job` trains or loads the FP32 model, runs `pipeline.quantize_to_tensorrt` on the real test images (streamed:
every model on each batch once, every check on the running statistics), makes the FP16 ONNX and records everything
in metrics.json under the sections the step-by-step scripts write, all as one run of files. The CLIs parse flags and call one of these. Its
stages (job_inputs, job_models, finish_job) are also parallel_job.py's, which runs them under torchrun.
"""

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import torch

from . import contract
from .artifacts import fresh_run, refuse_overwrite, save_torch, write_json
from .checks.result import CheckFailed
from .calib_files import FileData, array_batches, load_array_file, load_script_data
from .contract import ArtifactPaths
from .eager import distributed
from .eager.calibration import split_training
from .eager.data import (CIFAR10_CLASSES, calibration_batches, check_label_set, class_folder_names, layout_help,
                         load_cifar10)
from .eager.folders import DEFAULT_IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, Presets, eval_split_name, load_image_folder
from .eager.model import build_model, build_user_model, load_state_dict
from .errors import PipelineError
from .inputs import check_model
from .eager.requantize import load_int8_model
from .heldout import SplitBatches, evaluation_batch_size
from .eager.train import Recipe, check_trained, seed_everything, train
from .pipeline import GPU_SAMPLE, PipelineResult, QuantizeConfig, quantize_to_tensorrt, write_fp16
from .reports import metrics
from .reports.plots import plot_training
from .runtime.backends import PyTorchRunner
from .runtime.timing import cpu_latencies, environment


@dataclass
class DataOptions:
    """Where the images are and how they become inputs. With image_size, mean and std unset, CIFAR-10's layouts
    take the CIFAR-10 path (decoded once, cached, the reference's augmentation); anything else, or any of them set,
    is read as an ImageFolder with torchvision's presets (eager/folders.py)."""

    data_dir: Path = contract.DATA_DIR
    download: bool = False
    image_size: Optional[int] = None  # folders: DEFAULT_IMAGE_SIZE
    mean: Optional[tuple] = None  # folders: ImageNet's
    std: Optional[tuple] = None
    workers: int = 2

    def presets(self) -> Presets:
        return Presets(self.image_size or DEFAULT_IMAGE_SIZE, tuple(self.mean or IMAGENET_MEAN),
                       tuple(self.std or IMAGENET_STD), self.workers)


@dataclass
class JobOptions:
    """Everything a job needs to know; the CLI builds it from its flags."""

    data: DataOptions = field(default_factory=DataOptions)
    output_dir: Path = contract.OUTPUT_DIR
    arch: str = "resnet18"
    model: Optional[str] = None  # "module:factory" or "path/file.py:factory": the user's model instead of arch
    name: Optional[str] = None  # artifact name (default_name)
    checkpoint: Optional[Path] = None
    calib_data: Optional[Path] = None  # X.npy / X.npz (keyed by contract.INPUT_NAME) to calibrate on
    data_loader_script: Optional[str] = None  # S.py[:func] (Polygraphy's convention) to calibrate on
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
    # a converted INT8 model of the checkpoint saved whole (torch.save), instead of calibrating (eager/requantize.py)
    int8_model: Optional[Path] = None
    latency_runs: int = 200
    device: str = "auto"  # where FP32 and the graphs are evaluated (pipeline.quantize_to_tensorrt's device)
    cpu_sample: int = GPU_SAMPLE  # beside a GPU, held-out samples PyTorch INT8 and the CPU graphs run on
    overwrite: bool = False  # training may replace an existing FP32 state_dict
    save_every: int = 1
    restart: bool = False


def uses_cifar10(data: DataOptions) -> bool:
    """Whether `data` takes the CIFAR-10 path: no image size, mean or std asked for, and torchvision's CIFAR-10
    layout (or --download), or train/ and test/ with 10 class folders of PNGs (a missing folder too: the CIFAR-10
    loader then says what it expected)."""
    root = Path(data.data_dir)
    if data.image_size is not None or data.mean is not None or data.std is not None:
        return False
    if data.download or (root / "cifar-10-batches-py").is_dir() or not (root / "train").is_dir():
        return True
    if (root / "val").is_dir() or not (root / "test").is_dir():
        return False
    classes = class_folder_names(root / "train")
    if len(classes) != CIFAR10_CLASSES:
        return False
    with os.scandir(root / "train" / classes[0]) as it:
        return all(e.name.endswith(".png") for e in it if not e.name.startswith("."))


def load_data(data: DataOptions) -> dict:
    """{"train", "test"} splits (CIFAR-10 Splits, or an image folder's FolderSplits), the test split's labels
    checked against the class count, and "classes" (how many) and "kind" (in words)."""
    if uses_cifar10(data):
        splits = load_cifar10(data.data_dir, download=data.download)
        return {**splits, "classes": CIFAR10_CLASSES, "kind": "CIFAR-10", "cifar10": True}
    presets = data.presets()
    splits = load_image_folder(data.data_dir, presets)
    classes = len(splits["train"].classes)
    check_label_set(splits["test"], classes, eval_split_name(data.data_dir))
    return {**splits, "classes": classes, "cifar10": False,
            "kind": f"image folder {data.data_dir} ({classes} classes, {presets.image_size} px)"}


def sized_for_graph(data: DataOptions, graph) -> DataOptions:
    """An image folder without an image size is read at the size the ONNX graph takes (its input's height)."""
    from dataclasses import replace

    if data.image_size is not None or uses_cifar10(data):
        return data
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    height = dims[2].dim_value if len(dims) == 4 and dims[2].HasField("dim_value") else None
    return replace(data, image_size=height) if height else data


def class_count(data: DataOptions) -> int:
    """The number of classes `data` holds, from its folder names only (10 for CIFAR-10): checks that need it run
    before any image is decoded."""
    if uses_cifar10(data):
        root = Path(data.data_dir)
        evaluated = [s for s in ("val", "test") if (root / s).is_dir()]
        if evaluated and not (data.download or (root / "cifar-10-batches-py").is_dir() or (root / "train").is_dir()):
            # an image folder without train/ would otherwise be counted as CIFAR-10's 10 classes
            raise PipelineError(f"{root} has {evaluated[0]}/ but no train/ folder; {layout_help(root)}")
        return CIFAR10_CLASSES
    return len(class_folder_names(Path(data.data_dir) / "train"))


def default_name(opts: JobOptions, cifar10: bool) -> Optional[str]:
    """The artifacts' name: opts.name; else None (the reference's file names) for ResNet18 on CIFAR-10; else the
    arch, or the model factory's function name."""
    if opts.name is not None:
        return contract.check_name(opts.name)
    if opts.model is not None:
        return opts.model.rpartition(":")[2]
    return None if cifar10 and opts.arch == "resnet18" else opts.arch


def artifact_paths(opts: JobOptions) -> ArtifactPaths:
    """Where this job's artifacts go, under default_name's names (decided from the folder listing, no decoding)."""
    return ArtifactPaths(opts.output_dir, default_name(opts, uses_cifar10(opts.data)))


def new_model(opts: JobOptions, classes: int) -> torch.nn.Module:
    """The FP32 model, randomly initialised: opts.arch, or the user's factory (held to the quantizable contract)."""
    if opts.model is None:
        return build_model(opts.arch, classes)
    return check_model(build_user_model(opts.model, classes), f"the model {opts.model} returns")


def fp32_model(opts: JobOptions, data: dict) -> tuple[torch.nn.Module, dict]:
    """Load the checkpoint, or train with the recipe and save the FP32 state_dict (and its curve)."""
    seed_everything(opts.recipe.seed)  # before build_model: the initial weights come from the seeded generator
    model = new_model(opts, data["classes"])
    if opts.checkpoint is not None:
        return load_state_dict(model, opts.checkpoint, opts.model or opts.arch), {"checkpoint": str(opts.checkpoint)}
    paths = ArtifactPaths(opts.output_dir, default_name(opts, data["cifar10"]))
    refuse_overwrite(paths.fp32_state, opts.overwrite)
    history = train(model, data["train"], data["test"], opts.recipe, state_path=paths.train_state,
                    save_every=opts.save_every, restart=opts.restart)
    model.cpu()
    check_trained(model, history, data["test"])
    if distributed.is_main():  # under torchrun every rank trained the same model (DDP); rank 0 writes it
        _write_fp32(model, history, paths, f"{opts.model or opts.arch} on {data['kind']}")
    return model, {"epochs": history.epochs, "train_seconds": history.train_seconds, "recipe": asdict(opts.recipe)}


def _write_fp32(model: torch.nn.Module, history, paths: ArtifactPaths, title: str) -> None:
    """The trained FP32 state_dict, its history and curve; the resumable state removed (training finished)."""
    if paths.fp32_state.exists():
        print(f"replacing {paths.fp32_state} with the newly trained weights (overwrite)")
    save_torch(model.state_dict(), paths.fp32_state)
    paths.train_state.unlink(missing_ok=True)  # training finished: the resumable state is no longer needed
    if history.epochs:
        write_json(paths.training_history, {"epochs": history.epochs})
        plot_training(history.epochs, paths.training_curve, title=title)


def calibration_file(opts: JobOptions, chw: tuple) -> Optional[FileData]:
    """The calibration batches --calib-data or --data-loader-script give (checked against the input shape `chw`),
    None without either."""
    if opts.calib_data is not None:
        x = load_array_file(opts.calib_data, contract.INPUT_NAME, chw)
        return FileData(array_batches(x, opts.recipe.batch_size), None, f"calibration data {opts.calib_data}")
    if opts.data_loader_script is not None:
        return load_script_data(opts.data_loader_script, contract.INPUT_NAME, chw)
    return None


def calibration_data(train, opts: JobOptions, given: Optional[FileData] = None) -> tuple:
    """Calibration batches (`given`'s, else training images), and for calibration "auto" or the fallback (batches,
    labels) of other training images to choose on (disjoint from the calibration images)."""
    needs_holdout = opts.quantization.calibration == "auto" or opts.fallback
    if given is not None:
        held = split_training(train, 0, min(opts.holdout_images, len(train) // 2))[1] if needs_holdout else None
        return given.batches, (_pairs(held, opts.recipe.batch_size) if held is not None else None)
    if not needs_holdout:
        return calibration_batches(train, opts.recipe.batch_size, opts.calib_batches), None
    size = opts.recipe.batch_size
    holdout = min(opts.holdout_images, len(train) // 2)  # a small image folder keeps half for calibration
    calib_images = (opts.calib_batches or -(-(len(train) - holdout) // size)) * size
    calib, held = split_training(train, min(calib_images, len(train) - holdout), holdout)
    return [x for x, _ in calib.batches(size)], _pairs(held, size)


def _pairs(split, batch_size: int) -> tuple[list, list]:
    """(batches, labels per batch) of a split, in stored order."""
    batches = list(split.batches(batch_size))
    return [x for x, _ in batches], [y for _, y in batches]


@dataclass
class JobInputs:
    """What the main job reads before any model exists: the data, the artifact names, one test image (the input
    shape), the test split streamed in batches (heldout.SplitBatches, never held) and the calibration file's
    batches (--calib-data / --data-loader-script), if any."""

    data: dict
    name: Optional[str]
    paths: ArtifactPaths
    example: torch.Tensor
    evaluation: SplitBatches
    given: Optional[FileData]


@dataclass
class JobModels:
    """The models the main job hands to the pipeline: FP32 (trained or loaded, with its training record), the
    calibration batches and held-out images, and the INT8 model when this job made it (QAT, --int8-model, or PTQ
    under torchrun) with QAT's float twin and record; int8 None: the pipeline calibrates."""

    fp32: torch.nn.Module
    training: dict
    calib: Iterable
    holdout: Optional[tuple]
    int8: Optional[torch.nn.Module] = None
    twin: Optional[torch.nn.Module] = None
    qat: Optional[dict] = None


def main_job(opts: JobOptions) -> dict:
    """Train or load, quantize, make TensorRT-ready, verify on the test set, write artifacts and metrics.json."""
    t_start = time.perf_counter()
    inputs = job_inputs(opts)
    return finish_job(opts, inputs, job_models(opts, inputs), t_start)


def job_inputs(opts: JobOptions) -> JobInputs:
    """Load the data and the calibration file; a bad file stops the run here, before training."""
    data = load_data(opts.data)
    name = default_name(opts, data["cifar10"])
    example = next(iter(data["test"].batches(1)))[0]
    given = calibration_file(opts, tuple(example.shape[1:]))
    evaluation = SplitBatches(data["test"], evaluation_batch_size(tuple(example.shape[1:])))  # sized from the image read above
    return JobInputs(data, name, ArtifactPaths(opts.output_dir, name), example, evaluation, given)


def job_models(opts: JobOptions, inputs: JobInputs) -> JobModels:
    """The FP32 model and the calibration data; QAT's or the saved INT8 model where the job asks for one."""
    fp32, training = fp32_model(opts, inputs.data)
    calib, holdout = calibration_data(inputs.data["train"], opts, inputs.given)
    models = JobModels(fp32, training, calib, holdout)
    if opts.qat_epochs:
        models.calib = list(calib)  # QAT calibrates on them; the pipeline takes its example input from them
        models.int8, models.twin, models.qat = qat_model(fp32, models.calib, holdout, inputs.data, opts)
    elif opts.int8_model is not None:
        models.int8 = load_int8_model(opts.int8_model, opts.quantization.engine)
    return models


def finish_job(opts: JobOptions, inputs: JobInputs, models: JobModels, t_start: float,
               distributed_record: Optional[dict] = None) -> dict:
    """The main job's tail, once per job (rank 0 under torchrun): the pipeline on the test images, the FP16 ONNX,
    latencies and metrics.json (`distributed_record` as pytorch.distributed when given), as one run of files: the
    FP16 ONNX and metrics.json are replaced together with the graphs, or not at all (artifacts.fresh_run; the
    pipeline's own is nested in it). A failed check leaves the graphs that passed and the earlier run aside."""
    failed = []
    with fresh_run(opts.output_dir, inputs.paths.run_artifacts(), keep_previous=lambda: bool(failed)):
        try:
            result = quantize_to_tensorrt(models.fp32, models.calib, opts.output_dir, opts.quantization,
                                          data=inputs.evaluation, fast=opts.fast, accuracy_budget=opts.accuracy_budget,
                                          holdout=models.holdout, fallback=opts.fallback, int8=models.int8,
                                          float_twin=models.twin, name=inputs.name, device=opts.device,
                                          sample=opts.cpu_sample)
        except CheckFailed as exc:
            failed.append(exc)
        else:
            return _record_job(result, opts, inputs, models, t_start, distributed_record)
    raise failed[0]


def _record_job(result: PipelineResult, opts: JobOptions, inputs: JobInputs, models: JobModels, t_start: float,
                distributed_record: Optional[dict]) -> dict:
    """After the pipeline: the FP16 ONNX, latencies, and metrics.json."""
    extra = write_fp16(inputs.paths.fp32_onnx, inputs.paths.fp16_onnx, fp32_accuracy=result.accuracy["fp32"],
                       reference_name="PyTorch FP32", data=inputs.evaluation,
                       device=result.device) if opts.fp16 else []
    latency = job_latencies(result, inputs.example, opts.latency_runs)
    record = record_of(result, opts, models.training, latency, extra, time.perf_counter() - t_start, models.qat)
    record["pytorch"]["data"] = {"kind": inputs.data["kind"], "classes": inputs.data["classes"], "name": inputs.name,
                                 "input_shape": list(inputs.example.shape[1:]),
                                 "calibration_source": _calib_source(opts)}
    if distributed_record is not None:
        record["pytorch"]["distributed"] = distributed_record
    for section, values in record.items():
        metrics.update(inputs.paths.metrics, section, values)
    return {"result": result, "record": record, "checks": result.checks + extra}


def job_latencies(result: PipelineResult, example: torch.Tensor, runs: int) -> dict:
    """Batch-1 latencies of the FP32, INT8 and INT8 TorchScript models on the CPU, and of FP32 on CUDA if present."""
    latency = cpu_latencies({"fp32": result.fp32, "int8": result.int8, "int8_torchscript": result.int8_torchscript},
                            example, runs)
    if torch.cuda.is_available():
        latency.update(cpu_latencies({"fp32_cuda": result.fp32.cuda()}, example.cuda(), runs,
                                     sync=torch.cuda.synchronize, threads=False))
        result.fp32.cpu()
    return latency


def _calib_source(opts: JobOptions) -> str:
    if opts.calib_data is not None:
        return f"--calib-data {opts.calib_data}"
    if opts.data_loader_script is not None:
        return f"--data-loader-script {opts.data_loader_script}"
    return "training images"


def qat_method(fp32: torch.nn.Module, calib: list, holdout: tuple, config: QuantizeConfig) -> str:
    """The observers QAT calibrates with: the job's calibration method; for "auto", the method auto chooses for PTQ
    on the held-out training images (one PTQ pass). Measured (bench/matrix.py qat): ResNet50 from auto's entropy
    reaches 0.6574 against FP32 0.6590, where percentile's PTQ ranges leave it at 0.18."""
    if config.calibration != "auto":
        return config.calibration
    return ptq_model(fp32, calib, holdout, config).calibration_choice["method"]


def ptq_model(fp32: torch.nn.Module, calib: list, holdout: Optional[tuple], config: QuantizeConfig) -> torch.nn.Module:
    """Post-training INT8 model of `fp32`: fused and calibrated as quantize_to_tensorrt does it (eager/quantize.py
    calibrates through distributed.calibrate: under torchrun each rank its share, observers merged)."""
    from .eager.model import fuse
    from .eager.quantize import quantize

    fused, _ = fuse(fp32, tuple(calib[0].shape[1:]))
    return quantize(fused, calib, config.activation_dtype, config.calibration, config.engine, config.percentile,
                    holdout)


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
    pytorch = {"arch": opts.arch, "model": opts.model, "fp32_accuracy": result.accuracy.get("fp32"),
               "int8_accuracy": result.accuracy.get("int8"), "fusion_max_abs_diff": result.fusion_max_abs_diff,
               "int8_vs_onnx_agreement": result.check("agreement").figures, "latency_batch1_ms": latency,
               "activation_dtype": opts.quantization.activation_dtype, "engine": result.engine,
               "evaluation_device": result.device, "int8_samples": result.int8_samples,
               "calibration": opts.quantization.calibration, "calib_batches": opts.calib_batches,
               "calibration_choice": getattr(result.int8, "calibration_choice", None),
               "qat_epochs": opts.qat_epochs, "qat": qat, "fallback": opts.fallback,
               "int8_model": str(opts.int8_model) if opts.int8_model is not None else None,
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
            backend = "onnxruntime" if result.device == "cpu" else f"pytorch on {result.device} (Q/DQ as onnxruntime)"
            validation[g.path.name] = {"backend": backend, "model": str(g.path), "accuracy": g.accuracy,
                                       "samples": result.tallies["real"].samples, "quantized": True,
                                       "reference": ref, "reference_accuracy": result.accuracy[ref]}
    if validation:
        record["validation"] = validation
    if extra:
        record["fp16"] = {c.name: c.as_dict() for c in extra}
    return record


def pytorch_reference(torchscript: Path) -> tuple:
    """(a runner of PyTorch INT8 from a saved TorchScript, on the engine chosen for this machine, its name)."""
    from .eager.engines import select_engine

    from .eager.torchscript import load_int8_torchscript

    select_engine()  # loading repacks the weights for the current engine: make it the faithful one
    model = load_int8_torchscript(torchscript)
    return PyTorchRunner(model), f"PyTorch INT8 (TorchScript {Path(torchscript).name})"
