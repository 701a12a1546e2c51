"""The PTQ matrix of issue 15: train CIFAR-10 models on the GPU, then score every calibration method on CPU.

    python -m bench.matrix train --arch mobilenet_v2 --out runs/     # GPU: runs/mobilenet_v2.pt (+ history)
    python -m bench.matrix evaluate --arch mobilenet_v2 --out runs/  # CPU: runs/mobilenet_v2.json
    python -m bench.matrix qat --arch mobilenet_v2 --out runs/       # GPU: runs/mobilenet_v2_qat.json
    python -m bench.matrix modelopt --arch mobilenet_v2 --out runs/ --modelopt-python V/bin/python  # CPU
    python -m bench.matrix graphs --arch mobilenet_v2 --out runs/    # CPU: fast graph and fallback again
    python -m bench.matrix report runs/*.json --output bench/results/matrix_h200

evaluate: one calibration pass (RangeObserver with PyTorch's HistogramObserver inside) on a fixed random subset
of the training images, every method converted from it, `auto` choosing by top-1 on held-out training images
disjoint from those; each method's PyTorch INT8 accuracy on the first --test-images of a fixed random test
subset; the exact TensorRT-ready Q/DQ graph of auto's method in onnxruntime (graph as written) on the same
images, with its argmax agreement and distance ratio against PyTorch INT8 (eager2trt.checks.agreement), and the
fast graph; when the exact graph is more than --budget points below FP32, the automatic mixed precision
(graph/fallback.py) chooses the layers kept in float on the held-out training images, and the fallback graph is
scored on the test images.
qat: auto's method (chosen as evaluate does, without histogram), then eager2trt.eager.qat.quantize_qat for
--qat-epochs on the GPU from the FP32 checkpoint; PyTorch INT8 and its exact graph on the same test images.
modelopt: NVIDIA ModelOpt's ONNX PTQ (max and entropy, FP32 high precision) of the same FP32 ONNX on the same
calibration images (bench/anchors.run_modelopt; its own venv), scored in this environment's onnxruntime.
graphs: the fast graph and (when the exact graph is outside the budget) the fallback of auto's method again, for a
model evaluated before they changed; A_graphs.json, whose rows the report uses over A.json's. The fast and the
fallback graph carry the FP32 biases (graph/sensitivity.restore_float_biases), as the main job's do.
Each stage rewrites its JSON, so an interrupted run keeps what it finished; report merges A.json, A_qat.json,
A_modelopt.json and A_graphs.json per model.
"""

import argparse
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from bench.anchors import run_modelopt
from eager2trt.artifacts import atomic_path, save_torch, write_json
from eager2trt.checks.agreement import distance_ratio
from eager2trt.checks.compare import argmax_agreement, relative_distance
from eager2trt.runtime.backends import as_runner, logits
from eager2trt.eager.calibration import METHODS, calibrate, convert_copy, split_training
from eager2trt.eager.data import iterate_batches, load_cifar10
from eager2trt.eager.engines import select_engine
from eager2trt.eager.export import export_onnx
from eager2trt.eager.model import ARCHS, build_model, fuse, load_state_dict
from eager2trt.eager.qat import qat_recipe, quantize_qat
from eager2trt.eager.quantize import prepare_for
from eager2trt.graph.fallback import fallback
from eager2trt.graph.sensitivity import analyze, study
from eager2trt.jobs import qat_method
from eager2trt.pipeline import QuantizeConfig, make_graph
from eager2trt.eager.train import Recipe, seed_everything, train
from eager2trt.errors import run_cli
from eager2trt.graph.onnx_utils import load_onnx
from eager2trt.runtime.timing import environment


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=("train", "evaluate", "graphs", "qat", "modelopt", "report"))
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
    p.add_argument("--budget", type=float, default=1.0,
                   help="evaluate: points below FP32 beyond which the fallback runs (default: 1.0)")
    p.add_argument("--fallback-images", type=int, default=1000,
                   help="evaluate, graphs: held-out training images the fallback chooses on (default: 1000, all of "
                        "them, as the main job's --fallback)")
    p.add_argument("--qat-epochs", type=int, default=3, help="qat: fine-tuning epochs (default: 3)")
    p.add_argument("--train-subset", type=int, default=None, help="qat: training images per epoch (default: all)")
    p.add_argument("--modelopt-methods", nargs="+", default=["max", "entropy"], choices=("max", "entropy"),
                   help="modelopt: calibration methods (default: max entropy)")
    p.add_argument("--modelopt-python", default=sys.executable,
                   help="modelopt: python of the venv with nvidia-modelopt[onnx] (default: this one)")
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


def scores(model, batches: list, threads: int = 0) -> np.ndarray:
    """Float64 logits of a torch module or an ONNX model (graph as written) through the project's one loop."""
    options = {"threads": threads} if not isinstance(model, torch.nn.Module) else {}
    return logits(as_runner(model, **options), batches, desc=False).astype(np.float64)


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores.argmax(1) == labels).mean())


def setup(args) -> dict:
    """What every CPU stage of one model shares: data subsets, batches, the FP32 model and its fused copy."""
    torch.set_num_threads(args.threads)
    engine = select_engine(args.engine)
    warnings.filterwarnings("ignore")
    data = load_cifar10(args.data_dir)
    calib, holdout = split_training(data["train"], args.calib_images, args.holdout_images)
    test = data["test"].subset(args.test_images)
    fp32 = load_state_dict(build_model(args.arch), args.out / f"{args.arch}.pt", args.arch).eval()
    batches = [x for x, _ in iterate_batches(test, 250)]
    return {"engine": engine, "data": data, "calib": calib, "holdout": holdout, "test": test, "fp32": fp32,
            "batches": batches, "labels": test.labels.numpy(), "calib_batches": [x for x, _ in iterate_batches(calib, 128)],
            "hold_batches": [(x, y) for x, y in iterate_batches(holdout, 250)],
            "fused": fuse(fp32, tuple(batches[0].shape[1:]))[0]}


def evaluate_stage(args) -> None:
    """Every calibration method on one trained model, on CPU; the JSON is rewritten after each stage."""
    c = setup(args)
    batches, labels, calib, holdout, test = c["batches"], c["labels"], c["calib"], c["holdout"], c["test"]
    fp32, hold_batches = c["fp32"], c["hold_batches"]
    train_json = args.out / f"{args.arch}_train.json"
    record = {"arch": args.arch, "engine": c["engine"], "calib_images": len(calib), "holdout_images": len(holdout),
              "test_images": len(test), "threads": args.threads, "environment": environment(),
              "training": json.loads(train_json.read_text()) if train_json.exists() else None, "methods": {}}
    path = args.out / f"{args.arch}.json"
    t0 = time.perf_counter()
    fp32_logits = scores(fp32, batches)
    record.update(fp32_accuracy=accuracy(fp32_logits, labels), fp32_seconds=time.perf_counter() - t0)
    write_json(path, record)
    prepared = prepare_for(c["fused"], calibration="auto", auto_methods=METHODS)
    t0 = time.perf_counter()
    calibrate(prepared, c["calib_batches"], desc=f"{args.arch}: calibrating")
    record["calibration_seconds"] = time.perf_counter() - t0
    int8_logits = {}
    for method in METHODS:
        t0 = time.perf_counter()
        int8 = convert_copy(prepared, method)
        int8_logits[method] = scores(int8, batches)
        record["methods"][method] = {"holdout_accuracy": holdout_accuracy(int8, hold_batches),
                                     "test_accuracy": accuracy(int8_logits[method], labels),
                                     "seconds": time.perf_counter() - t0}
        print(f"{args.arch} {method}: {record['methods'][method]}", flush=True)
        write_json(path, record)
    for name, candidates in (("auto", METHODS), ("auto_without_histogram", METHODS[:-1])):
        best = max(candidates, key=lambda m: record["methods"][m]["holdout_accuracy"])  # ties: the earlier one
        record[name] = {"method": best, "test_accuracy": record["methods"][best]["test_accuracy"]}
    write_json(path, record)
    method = record["auto"]["method"]
    with tempfile.TemporaryDirectory() as tmp:
        fp32_onnx = load_onnx(export_onnx(fp32, Path(tmp) / "fp32.onnx", batches[0]))
        exported = load_onnx(export_onnx(convert_copy(prepared, method), Path(tmp) / "int8.onnx", batches[0]))
    record["graph"] = graph_row(exported, batches, labels, int8_logits[method], fp32_logits, args.threads)
    record["fast_graph"] = fast_row(exported, fp32_onnx, batches, labels, args.threads)
    write_json(path, record)
    if "test_accuracy" in record["graph"] and record["graph"]["test_accuracy"] < record["fp32_accuracy"] - args.budget / 100:
        images = hold_batches[:max(1, args.fallback_images // 250)]  # batches of 250
        record["fallback"] = fallback_row(exported, fp32_onnx, images, batches, labels, args)
        write_json(path, record)
    print(f"{args.arch}: done", flush=True)


def holdout_accuracy(int8: torch.nn.Module, hold_batches: list) -> float:
    with torch.no_grad():
        return float(np.mean(np.concatenate([(int8(x).argmax(1) == y).numpy() for x, y in hold_batches])))


def graph_row(exported, batches: list, labels: np.ndarray, pt: np.ndarray, fp32: np.ndarray, threads: int) -> dict:
    """The exact TensorRT-ready graph of the export in onnxruntime (graph as written), its agreement with PyTorch."""
    t0 = time.perf_counter()
    g = make_graph(exported, "exact")
    if g.model is None:
        return {"refused": g.refused}
    graph = scores(g.model, batches, threads)
    return {"test_accuracy": accuracy(graph, labels), "argmax_agreement_with_pytorch": argmax_agreement(pt, graph),
            "distance_ratio": distance_ratio(pt, graph, fp32), "pytorch_vs_fp32_relative": relative_distance(pt, fp32),
            "graph_vs_fp32_relative": relative_distance(graph, fp32), "seconds": time.perf_counter() - t0}


def fast_row(exported, fp32_onnx, batches: list, labels: np.ndarray, threads: int) -> dict:
    """The fast graph (FP32 high precision, the FP32 biases): its accuracy and predicted unfused layers, or why it
    was refused."""
    g = make_graph(exported, "fast", fp32=fp32_onnx)
    if g.model is None:
        return {"refused": g.refused}
    graph = scores(g.model, batches, threads)
    return {"test_accuracy": accuracy(graph, labels), **{k: g.performance.get(k) for k in (
        "fusable_residual_adds", "residual_adds", "predicted_unfused_layers")}}


def fallback_row(exported, fp32_onnx, hold_batches: list, batches: list, labels: np.ndarray, args) -> dict:
    """Layers kept in float chosen on the held-out training images (never the test set); the graph scored on test."""
    t0 = time.perf_counter()
    s = study(exported, [x.numpy() for x, _ in hold_batches], np.concatenate([y.numpy() for _, y in hold_batches]),
              fp32=fp32_onnx, threads=args.threads, float_from=fp32_onnx)  # as the main job's fallback
    report = analyze(s, alone_quantized=False, progress=False)
    fb = fallback(s, report, args.budget, progress=False)
    graph = scores(fb.model, batches, args.threads)
    return {"kept": fb.kept, "layers": len(s.layers), "reached_on_holdout": fb.reached, "float_biases": s.float_biases,
            "holdout_int8": s.int8.score,
            "holdout_score": fb.measurement.score, "holdout_reference": fb.reference_score,
            "test_accuracy": accuracy(graph, labels), "extra_layers": fb.extra_layers,
            "ranking": [{"layer": u.label if hasattr(u, "label") else u.name, "gain": u.gain} for u in report.layers[:10]],
            "evaluations": s.evaluator.runs, "seconds": time.perf_counter() - t0}


def auto_export(c: dict, record: dict) -> tuple:
    """auto's method (from the evaluate stage's `record`), the FP32 ONNX and that method's INT8 export, calibrated
    on the same images as evaluate."""
    method = record["auto"]["method"]
    prepared = prepare_for(c["fused"], calibration="auto", auto_methods=METHODS)
    calibrate(prepared, c["calib_batches"], desc=f"{record['arch']}: calibrating")
    with tempfile.TemporaryDirectory() as tmp:
        fp32_onnx = load_onnx(export_onnx(c["fp32"], Path(tmp) / "fp32.onnx", c["batches"][0]))
        exported = load_onnx(export_onnx(convert_copy(prepared, method), Path(tmp) / "int8.onnx", c["batches"][0]))
    return method, fp32_onnx, exported


def graphs_stage(args) -> None:
    """The fast graph and the fallback again, for a model evaluated before either changed: auto's method from
    A.json, the same calibration images; writes A_graphs.json, whose rows the report uses over A.json's."""
    c = setup(args)
    record = json.loads((args.out / f"{args.arch}.json").read_text())
    method, fp32_onnx, exported = auto_export(c, record)
    out = {"arch": args.arch, "method": method, "environment": environment(),
           "fast_graph": fast_row(exported, fp32_onnx, c["batches"], c["labels"], args.threads)}
    path = args.out / f"{args.arch}_graphs.json"
    write_json(path, out)
    exact = (record.get("graph") or {}).get("test_accuracy")
    if exact is not None and exact < record["fp32_accuracy"] - args.budget / 100:
        images = c["hold_batches"][:max(1, args.fallback_images // 250)]
        out["fallback"] = fallback_row(exported, fp32_onnx, images, c["batches"], c["labels"], args)
        write_json(path, out)
    print(f"{args.arch} graphs: fast {out['fast_graph'].get('test_accuracy')}, fallback "
          f"{(out.get('fallback') or {}).get('test_accuracy', 'not needed')}", flush=True)


def paired(right_a: np.ndarray, right_b: np.ndarray) -> dict:
    """Two graphs on the same images: where only A is right, where only B is, and the exact two-sided McNemar
    p-value of that split (binomial, p = 1/2): whether the accuracy difference is more than chance on these
    images."""
    a_only, b_only = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    n, k = a_only + b_only, min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n if n else 1.0
    return {"only_this_right": a_only, "only_ours_right": b_only, "p_value": min(1.0, 2.0 * tail)}


def our_fast_correct(c: dict, args) -> Optional[np.ndarray]:
    """Per test image, whether our PTQ fast graph (auto's method, FP32 biases) is right; None before evaluate."""
    path = args.out / f"{args.arch}.json"
    if not path.exists():
        return None
    _, fp32_onnx, exported = auto_export(c, json.loads(path.read_text()))
    g = make_graph(exported, "fast", fp32=fp32_onnx)
    return None if g.model is None else scores(g.model, c["batches"], args.threads).argmax(1) == c["labels"]


def qat_stage(args) -> None:
    """QAT from the FP32 checkpoint (GPU when there is one), initialised from auto's calibration method (the
    main job's jobs.qat_method); its exact graph (the export's rounded biases) and fast graph (the fine-tuned
    float twin's unrounded biases, as the main job's)."""
    c = setup(args)
    path = args.out / f"{args.arch}_qat.json"
    t0 = time.perf_counter()
    holdout = ([x for x, _ in c["hold_batches"]], [y for _, y in c["hold_batches"]])
    method = qat_method(c["fp32"], c["calib_batches"], holdout, QuantizeConfig(calibration="auto", engine=c["engine"]))
    record = {"arch": args.arch, "qat_epochs": args.qat_epochs, "calibration": method,
              "ptq_seconds": time.perf_counter() - t0, "test_images": len(c["test"]), "environment": environment()}
    write_json(path, record)
    t0 = time.perf_counter()
    run = quantize_qat(c["fp32"], c["calib_batches"], c["data"]["train"], c["test"], args.qat_epochs,
                       qat_recipe(args.qat_epochs, train_subset=args.train_subset), calibration=method,
                       engine=c["engine"])
    record.update(qat_seconds=time.perf_counter() - t0, history=run.history.epochs)
    pt = scores(run.int8, c["batches"])
    record["pytorch_int8_accuracy"] = accuracy(pt, c["labels"])
    record["float_twin_accuracy"] = accuracy(scores(run.float_model, c["batches"]), c["labels"])
    with tempfile.TemporaryDirectory() as tmp:
        exported = load_onnx(export_onnx(run.int8, Path(tmp) / "int8.onnx", c["batches"][0]))
        twin = load_onnx(export_onnx(run.float_model, Path(tmp) / "twin.onnx", c["batches"][0]))
    record["graph"] = graph_row(exported, c["batches"], c["labels"], pt, scores(c["fp32"], c["batches"]), args.threads)
    record["fast_graph"] = fast_row(exported, twin, c["batches"], c["labels"], args.threads)
    write_json(path, record)
    print(f"{args.arch} qat: {record['pytorch_int8_accuracy']:.4f}, graph {record['graph'].get('test_accuracy')}, "
          f"fast graph {record['fast_graph'].get('test_accuracy')}", flush=True)


def modelopt_stage(args) -> None:
    """ModelOpt's ONNX PTQ (max, entropy; FP32 high precision) on our calibration images, scored on our test set,
    each paired with our PTQ fast graph on the same images (paired())."""
    c = setup(args)
    path = args.out / f"{args.arch}_modelopt.json"
    record = {"arch": args.arch, "test_images": len(c["test"]), "methods": {}, "environment": environment()}
    if path.exists():  # another run's methods are kept: each method is one call
        record["methods"] = json.loads(path.read_text()).get("methods", {})
    ours = our_fast_correct(c, args)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32_onnx = export_onnx(c["fp32"], work / "fp32.onnx", c["batches"][0])
        np.save(work / "calib.npy", torch.cat(c["calib_batches"]).numpy())
        for method in args.modelopt_methods:
            out = work / f"modelopt_{method}.onnx"
            seconds = run_modelopt(args.modelopt_python, fp32_onnx, work / "calib.npy", method, "fp32", out)
            graph = scores(load_onnx(out), c["batches"], args.threads)
            record["methods"][method] = {"test_accuracy": accuracy(graph, c["labels"]), "seconds": seconds}
            if ours is not None:  # the same images: is the difference from our fast graph more than chance?
                record["methods"][method]["vs_our_fast_graph"] = paired(graph.argmax(1) == c["labels"], ours)
            print(f"{args.arch} modelopt {method}: {record['methods'][method]}", flush=True)
            write_json(path, record)


def merged(paths: list) -> list:
    """One record per model: A.json with A_qat.json and A_modelopt.json under "qat" and "modelopt", and
    A_graphs.json's fast_graph and fallback over A.json's."""
    rows, extra = {}, {}
    for p in paths:
        stem = p.stem
        if stem.endswith("_train"):
            continue
        part = next((k for k in ("qat", "modelopt", "graphs") if stem.endswith("_" + k)), None)
        record = json.loads(p.read_text())
        if part == "graphs":  # the graphs stage's rows, measured where its environment says
            extra.setdefault(record["arch"], {}).update(
                {k: {**record[k], "environment": record["environment"]} for k in ("fast_graph", "fallback") if k in record})
        elif part:
            extra.setdefault(record["arch"], {})[part] = record
        else:
            rows[record["arch"]] = record
    return [{**r, **extra.get(arch, {})} for arch, r in rows.items()]  # a stage run later wins (fallback rerun)


def report_stage(args) -> None:
    """Merge per-model JSON into OUTPUT.json and a markdown table OUTPUT.md; print the table."""
    rows = merged(args.results)
    table = "## Summary (points below FP32)\n\n" + summary(rows) + "\n## Every column\n\n" + markdown(rows, args.note)
    write_json(args.output.with_suffix(".json"), {"command": " ".join(sys.argv), "notes": args.note, "models": rows})
    args.output.with_suffix(".md").write_text(table)
    plot(rows, args.output.with_suffix(".png"))
    print(table)


def _acc(d: Optional[dict], key: str = "test_accuracy") -> str:
    return f"{d[key]:.4f}" if d and d.get(key) is not None else "-"


def tensorrt_ready(r: dict) -> dict:
    """Each way to a TensorRT-ready graph and its test accuracy: PTQ exact/fast, fallback, QAT, ModelOpt."""
    out = {"exact": (r.get("graph") or {}).get("test_accuracy"), "fast": (r.get("fast_graph") or {}).get("test_accuracy"),
           "fallback": (r.get("fallback") or {}).get("test_accuracy"),
           "qat": ((r.get("qat") or {}).get("graph") or {}).get("test_accuracy"),
           "qat_fast": ((r.get("qat") or {}).get("fast_graph") or {}).get("test_accuracy")}
    mo = (r.get("modelopt") or {}).get("methods", {})
    out.update({f"modelopt_{m}": v.get("test_accuracy") for m, v in mo.items()})
    return out


BARS = (("FP32", None), ("PTQ auto, exact graph", "exact"), ("PTQ auto, fast graph", "fast"),
        ("fallback graph", "fallback"), ("QAT, exact graph", "qat"), ("QAT, fast graph", "qat_fast"),
        ("ModelOpt max", "modelopt_max"),
        ("ModelOpt entropy", "modelopt_entropy"))


def plot(rows: list, path: Path) -> Path:
    """Points below FP32 of each way to a TensorRT-ready graph, per model (missing bars: not run or not needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / (len(BARS) - 1)
    for i, (label, key) in enumerate(BARS[1:]):
        xs, ys = [], []
        for j, r in enumerate(rows):
            value = tensorrt_ready(r).get(key)
            if value is not None:
                xs.append(j + (i - (len(BARS) - 2) / 2) * width)
                ys.append(max(100 * (value - r["fp32_accuracy"]), -30.0))  # clipped: the collapses read as -30
        ax.bar(xs, ys, width, label=label, color=f"C{i}")
    ax.axhline(-1.0, color="red", ls="--", lw=0.8, label="budget (-1 point)")
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_xticks(range(len(rows)), [r["arch"] for r in rows], rotation=15)
    ax.set_ylabel("top-1 minus FP32 (points, clipped at -30)")
    ax.set_title("CIFAR-10, 30-epoch models: TensorRT-ready INT8 graphs against FP32")
    ax.legend(fontsize=7, ncol=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _points(value: Optional[float], fp32: float, extra: str = "") -> str:
    return "-" if value is None else f"{100 * (value - fp32):+.2f}{extra}"


def summary(rows: list, budget: float = 1.0) -> str:
    """The README's table: points below FP32 of each TensorRT-ready graph, and the best of ours within budget."""
    head = ["model", "FP32", "PTQ auto, exact", "PTQ auto, fast", "fallback (layers in float)", "QAT (best graph)",
            "ModelOpt max", "ModelOpt entropy", "within 1 point"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        f, t = r["fp32_accuracy"], tensorrt_ready(r)
        fb, qat = r.get("fallback"), r.get("qat")
        ours = {k: v for k, v in t.items() if v is not None and not k.startswith("modelopt")}
        best = max(ours, key=ours.get) if ours else None
        ok = best is not None and ours[best] >= f - budget / 100
        qat_best = max((v for k, v in t.items() if k.startswith("qat") and v is not None), default=None)
        cells = [r["arch"], f"{f:.4f}", _points(t["exact"], f) if t["exact"] is not None else "refused",
                 _points(t["fast"], f), _points(t["fallback"], f, f" ({len(fb['kept'])}/{fb['layers']})") if fb
                 else "not needed", _points(qat_best, f, f" ({qat['qat_epochs']} ep)") if qat else "-",
                 _points(t.get("modelopt_max"), f), _points(t.get("modelopt_entropy"), f),
                 f"{'yes' if ok else '**no**'} ({best})" if best else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(rows: list, notes: list = ()) -> str:
    head = ["model", "epochs", "FP32"] + list(METHODS) + ["auto (method)", "exact graph", "agree", "dist ratio",
                                                          "fast graph", "fallback (kept)", "QAT exact graph",
                                                          "QAT fast graph",
                                                          "ModelOpt max", "ModelOpt entropy", "best ours - FP32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        methods = r.get("methods", {})
        cells = [r["arch"], str(len((r.get("training") or {}).get("epochs", []))), f"{r.get('fp32_accuracy', 0):.4f}"]
        cells += [_acc(methods.get(m)) for m in METHODS]
        auto, graph = r.get("auto"), r.get("graph") or {}
        cells.append(f"{auto['test_accuracy']:.4f} ({auto['method']})" if auto else "-")
        cells += ([_acc(graph), f"{graph['argmax_agreement_with_pytorch']:.4f}", f"{graph['distance_ratio']:.3f}"]
                  if "test_accuracy" in graph else ["refused" if graph else "-", "-", "-"])
        cells.append(_acc(r.get("fast_graph")))
        fb = r.get("fallback")
        cells.append(f"{fb['test_accuracy']:.4f} ({len(fb['kept'])} of {fb['layers']})" if fb else "not needed")
        qat = r.get("qat")
        cells += [f"{_acc(qat.get('graph'))} ({qat['qat_epochs']} ep)", _acc(qat.get("fast_graph"))] if qat else ["-", "-"]
        mo = (r.get("modelopt") or {}).get("methods", {})
        cells += [_acc(mo.get("max")), _acc(mo.get("entropy"))]
        ours = [v for k, v in tensorrt_ready(r).items() if v is not None and not k.startswith("modelopt")]
        cells.append(f"{100 * (max(ours) - r['fp32_accuracy']):+.2f}" if ours and "fp32_accuracy" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0] if rows else {}
    env = first.get("environment", {})
    gpu = next((g for r in rows for g in [((r.get("qat") or {}).get("environment") or {}).get("gpu")] if g), None)
    threads = sorted({r.get("threads") for r in rows if r.get("threads")})
    lines += ["", f"PyTorch INT8 on the {first.get('engine')} engine; calibration: {first.get('calib_images')} random "
              f"training images; auto chooses by top-1 on {first.get('holdout_images')} other training images, and "
              f"the fallback chooses its float layers on them too; accuracies on {first.get('test_images')} random "
              f"test images (the same for every column). Graph columns are TensorRT-ready Q/DQ graphs in onnxruntime "
              f"(graph as written). Machine: {gpu} (training, QAT), {env.get('cpu')} with "
              f"{'-'.join(map(str, threads))} threads per model (CPU stages), torch {env.get('torch')}, onnxruntime "
              f"{env.get('onnxruntime')}. FP32 here is on the same test images; the training run's own 10,000-image "
              f"figure is in the JSON."]
    lines += [""] + [f"- {n}" for n in notes] if notes else []
    return "\n".join(lines) + "\n"


def main(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    {"train": train_stage, "evaluate": evaluate_stage, "graphs": graphs_stage, "qat": qat_stage,
     "modelopt": modelopt_stage,
     "report": report_stage}[args.stage](args)


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
