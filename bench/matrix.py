"""The PTQ matrix of issue 15: train CIFAR-10 models on the GPU, then score every calibration method on CPU.

    python bench/matrix.py train --arch mobilenet_v2 --out runs/     # GPU: runs/mobilenet_v2.pt (+ history)
    python bench/matrix.py evaluate --arch mobilenet_v2 --out runs/  # CPU: runs/mobilenet_v2.json
    python bench/matrix.py report runs/*.json --output bench/results/matrix_h200

evaluate: one calibration pass (RangeObserver with PyTorch's HistogramObserver inside) on a fixed random subset
of the training images, every method converted from it, `auto` choosing by top-1 on held-out training images
disjoint from those; each method's PyTorch INT8 accuracy on the first --test-images of a fixed random test
subset; the exact TensorRT-ready Q/DQ graph of auto's method in onnxruntime (graph as written) on the same
images, with its argmax agreement and distance ratio against PyTorch INT8 (eager2trt.checks.agreement).
Each stage rewrites the JSON, so an interrupted run keeps what it finished.
"""

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from eager2trt.artifacts import save_torch, write_json
from eager2trt.checks.agreement import distance_ratio
from eager2trt.checks.compare import argmax_agreement, relative_distance
from eager2trt.runtime.backends import OnnxRunner, logits
from eager2trt.eager.calibration import METHODS, calibrate, convert_copy, split_training
from eager2trt.eager.data import iterate_batches, load_cifar10
from eager2trt.eager.engines import select_engine
from eager2trt.eager.export import export_onnx
from eager2trt.eager.model import ARCHS, build_model, fuse, load_state_dict
from eager2trt.eager.quantize import prepare_for
from eager2trt.eager.train import Recipe, seed_everything, train
from eager2trt.errors import run_cli
from eager2trt.graph.onnx_utils import load_onnx
from eager2trt.graph.surgery import make_tensorrt_ready
from eager2trt.runtime.timing import environment


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=("train", "evaluate", "report"))
    p.add_argument("results", nargs="*", type=Path, help="report: the per-model JSON files")
    p.add_argument("--arch", choices=ARCHS, help="train/evaluate: the model (default: none)")
    p.add_argument("--data-dir", type=Path, default=Path("/root/cifar10"), help="CIFAR-10 (default: /root/cifar10)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="checkpoints and JSON (default: runs)")
    p.add_argument("--epochs", type=int, default=30, help="train: epochs (default: 30)")
    p.add_argument("--milestones", type=int, nargs="+", default=[15, 25], help="train: LR steps (default: 15 25)")
    p.add_argument("--calib-images", type=int, default=2560, help="evaluate: calibration images (default: 2560)")
    p.add_argument("--holdout-images", type=int, default=1000, help="evaluate: auto's held-out images (default: 1000)")
    p.add_argument("--test-images", type=int, default=5000, help="evaluate: test images scored (default: 5000)")
    p.add_argument("--threads", type=int, default=2, help="evaluate: CPU threads (default: 2)")
    p.add_argument("--engine", default="qnnpack", help="evaluate: quantized CPU engine (default: qnnpack)")
    p.add_argument("--note", action="append", default=[], help="report: a line added under the table (repeatable)")
    p.add_argument("--output", type=Path, default=Path("bench/results/matrix_h200"),
                   help="report: writes OUTPUT.json and OUTPUT.md (default: bench/results/matrix_h200)")
    return p


def train_stage(args) -> None:
    """Train one model with the reference recipe shortened to --epochs; save its FP32 state_dict."""
    data = load_cifar10(args.data_dir)
    seed_everything(0)
    model = build_model(args.arch)
    recipe = Recipe(epochs=args.epochs, milestones=tuple(args.milestones))
    t0 = time.perf_counter()
    try:
        history = train(model, data["train"], data["test"], recipe)
    except Exception as exc:  # a torch.compile failure on one architecture: train it eagerly instead
        print(f"{args.arch}: compiled training failed ({type(exc).__name__}: {str(exc)[:200]}); eager", flush=True)
        seed_everything(0)
        model = build_model(args.arch)
        recipe.compile_mode = None
        history = train(model, data["train"], data["test"], recipe)
    save_torch(model.cpu().state_dict(), args.out / f"{args.arch}.pt")
    write_json(args.out / f"{args.arch}_train.json",
               {"arch": args.arch, "epochs": history.epochs, "train_seconds": history.train_seconds,
                "wall_seconds": time.perf_counter() - t0, "compile_mode": recipe.compile_mode,
                "recipe": {k: getattr(recipe, k) for k in recipe.__dataclass_fields__}, "environment": environment()})


def logits(model: torch.nn.Module, batches: list) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(x) for x in batches]).double().numpy()


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores.argmax(1) == labels).mean())


def evaluate_stage(args) -> None:
    """Every calibration method on one trained model, on CPU; the JSON is rewritten after each stage."""
    torch.set_num_threads(args.threads)
    engine = select_engine(args.engine)
    warnings.filterwarnings("ignore")
    data = load_cifar10(args.data_dir)
    calib, holdout = split_training(data["train"], args.calib_images, args.holdout_images)
    test = data["test"].subset(args.test_images)
    batches = [x for x, _ in iterate_batches(test, 250)]
    labels = test.labels.numpy()
    fp32 = load_state_dict(build_model(args.arch), args.out / f"{args.arch}.pt", args.arch).eval()
    fused, _ = fuse(fp32, tuple(batches[0].shape[1:]))
    train_json = args.out / f"{args.arch}_train.json"
    record = {"arch": args.arch, "engine": engine, "calib_images": len(calib), "holdout_images": len(holdout),
              "test_images": len(test), "threads": args.threads, "environment": environment(),
              "training": json.loads(train_json.read_text()) if train_json.exists() else None, "methods": {}}
    path = args.out / f"{args.arch}.json"
    t0 = time.perf_counter()
    fp32_logits = logits(fp32, batches)
    record.update(fp32_accuracy=accuracy(fp32_logits, labels), fp32_seconds=time.perf_counter() - t0)
    write_json(path, record)
    prepared = prepare_for(fused, calibration="auto", auto_methods=METHODS)
    t0 = time.perf_counter()
    calibrate(prepared, [x for x, _ in iterate_batches(calib, 128)], desc=f"{args.arch}: calibrating")
    record["calibration_seconds"] = time.perf_counter() - t0
    hold_batches = [(x, y) for x, y in iterate_batches(holdout, 250)]
    int8_logits = {}
    for method in METHODS:
        t0 = time.perf_counter()
        int8 = convert_copy(prepared, method)
        with torch.no_grad():
            hold = float(np.mean(np.concatenate([(int8(x).argmax(1) == y).numpy() for x, y in hold_batches])))
        int8_logits[method] = logits(int8, batches)
        record["methods"][method] = {"holdout_accuracy": hold, "test_accuracy": accuracy(int8_logits[method], labels),
                                     "seconds": time.perf_counter() - t0}
        print(f"{args.arch} {method}: {record['methods'][method]}", flush=True)
        write_json(path, record)
    for name, candidates in (("auto", METHODS), ("auto_without_histogram", METHODS[:-1])):
        best = max(candidates, key=lambda m: record["methods"][m]["holdout_accuracy"])  # ties: the earlier one
        record[name] = {"method": best, "test_accuracy": record["methods"][best]["test_accuracy"]}
    write_json(path, record)
    record["graph"] = graph_row(convert_copy(prepared, record["auto"]["method"]), batches, labels,
                                int8_logits[record["auto"]["method"]], fp32_logits, args.threads)
    write_json(path, record)
    print(f"{args.arch}: done", flush=True)


def graph_row(int8: torch.nn.Module, batches: list, labels: np.ndarray, pt: np.ndarray, fp32: np.ndarray,
              threads: int) -> dict:
    """The exact TensorRT-ready graph of `int8` in onnxruntime (graph as written) and its agreement with PyTorch."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        exported = load_onnx(export_onnx(int8, Path(tmp) / "int8.onnx", batches[0]))
    ready, _ = make_tensorrt_ready(exported)
    graph = logits(OnnxRunner(ready, threads=threads), batches, desc=False).astype(np.float64)
    return {"test_accuracy": accuracy(graph, labels), "argmax_agreement_with_pytorch": argmax_agreement(pt, graph),
            "distance_ratio": distance_ratio(pt, graph, fp32), "pytorch_vs_fp32_relative": relative_distance(pt, fp32),
            "graph_vs_fp32_relative": relative_distance(graph, fp32), "seconds": time.perf_counter() - t0}


def report_stage(args) -> None:
    """Merge per-model JSON into OUTPUT.json and a markdown table OUTPUT.md; print the table."""
    rows = [json.loads(p.read_text()) for p in args.results]
    table = markdown(rows, args.note)
    write_json(args.output.with_suffix(".json"), {"command": " ".join(sys.argv), "notes": args.note, "models": rows})
    args.output.with_suffix(".md").write_text(table)
    print(table)


def markdown(rows: list, notes: list = ()) -> str:
    head = ["model", "epochs", "FP32"] + list(METHODS) + ["auto (method)", "exact graph (ORT)", "agree", "dist ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        methods = r.get("methods", {})
        cells = [r["arch"], str(len((r.get("training") or {}).get("epochs", []))), f"{r.get('fp32_accuracy', 0):.4f}"]
        cells += [f"{methods[m]['test_accuracy']:.4f}" if m in methods else "-" for m in METHODS]
        auto, graph = r.get("auto"), r.get("graph")
        cells.append(f"{auto['test_accuracy']:.4f} ({auto['method']})" if auto else "-")
        cells += ([f"{graph['test_accuracy']:.4f}", f"{graph['argmax_agreement_with_pytorch']:.4f}",
                   f"{graph['distance_ratio']:.3f}"] if graph else ["-"] * 3)
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0] if rows else {}
    env = first.get("environment", {})
    threads = sorted({r.get("threads") for r in rows})
    lines += ["", f"PyTorch INT8 on the {first.get('engine')} engine; calibration: {first.get('calib_images')} random "
              f"training images; auto chooses by top-1 on {first.get('holdout_images')} other training images; "
              f"accuracies on {first.get('test_images')} random test images. Machine: {env.get('gpu')} (training), "
              f"{env.get('cpu')} with {'-'.join(map(str, threads))} threads per model (CPU stages; the six models in "
              f"parallel), torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}. FP32 here is on the same "
              f"test images; the training run's own 10,000-image figure is in the JSON."]
    lines += [""] + [f"- {n}" for n in notes] if notes else []
    return "\n".join(lines) + "\n"


def main(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    {"train": train_stage, "evaluate": evaluate_stage, "report": report_stage}[args.stage](args)


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
