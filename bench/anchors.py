"""Anchors: NVIDIA ModelOpt's ONNX PTQ beside our exact and fast Q/DQ graphs, in one run.

Same FP32 ONNX, same calibration images (a fixed random subset of the training set): ModelOpt int8 (max and
entropy calibration, FP16 and FP32 high precision) against ours (the checkpoint quantized in PyTorch on those
images, then exact, fast FP32 and fast FP16). For each: accuracy on all 10,000 test images, argmax agreement
with FP32 and with PyTorch INT8, Q and DQ counts, fusable residual Adds, file size, onnxruntime CPU batch-1
latency. ModelOpt is optional and pins onnx/onnxruntime versions other than requirements.txt, so it runs as a
subprocess of --modelopt-python (its own venv); every graph is evaluated here, in this environment's
onnxruntime. Writes OUTPUT.json and OUTPUT.md and prints the table last.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from eager2trt import contract
from eager2trt.artifacts import atomic_path, write_json
from eager2trt.eager.data import iterate_batches, load_cifar10, normalize
from eager2trt.errors import PipelineError, run_cli
from eager2trt.eager.export import export_onnx
from eager2trt.graph.lint import performance_summary
from eager2trt.eager.model import build_model, fuse, load_state_dict
from eager2trt.eager.quantize import quantize
from eager2trt.graph.onnx_utils import load_onnx
from eager2trt.pipeline import make_graph
from eager2trt.runtime.timing import environment, measure
from eager2trt.runtime.backends import OnnxRunner, logits, ort_session

MODELOPT_VARIANTS = [("max", "fp16"), ("max", "fp32"), ("entropy", "fp16"), ("entropy", "fp32")]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=contract.OUTPUT_DIR / contract.FP32_STATE,
                   help="FP32 state_dict that our INT8 graphs are quantized from")
    p.add_argument("--fp32-onnx", type=Path, default=contract.OUTPUT_DIR / contract.FP32_ONNX,
                   help="FP32 ONNX of the same checkpoint (resnet_torch.py writes it); ModelOpt quantizes this")
    p.add_argument("--data-dir", type=Path, default=contract.DATA_DIR, help="CIFAR-10 (calibration and test images)")
    p.add_argument("--calib-images", type=int, default=8192, help="calibration images, for ours and ModelOpt alike")
    p.add_argument("--modelopt-python", default=sys.executable,
                   help="python of the venv where nvidia-modelopt[onnx] is installed")
    p.add_argument("--runs", type=int, default=200, help="timed batch-1 runs per graph (1 onnxruntime thread)")
    p.add_argument("--output", type=Path, default=Path("bench/results/anchors"), help="writes OUTPUT.json, OUTPUT.md")
    p.add_argument("--work-dir", type=Path, help="keep the graphs here (default: a temporary folder)")
    return p


def modelopt_version(python: str) -> str:
    """ModelOpt's version under `python`, or one sentence saying how to install it."""
    proc = subprocess.run([python, "-c", "import modelopt, modelopt.onnx.quantization; print(modelopt.__version__)"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"NVIDIA ModelOpt is not installed for {python}: install it into its own venv "
                            f"(python3 -m venv V && V/bin/pip install 'nvidia-modelopt[onnx]'; it pins onnx and "
                            f"onnxruntime versions other than requirements.txt) and pass --modelopt-python V/bin/python")
    return proc.stdout.strip().splitlines()[-1]


def calibration_images(train, n: int) -> torch.Tensor:
    """A fixed random subset of the training images, normalized float32 NCHW."""
    if n <= 0:
        raise PipelineError(f"--calib-images must be positive, got {n}")
    return normalize(train.subset(n).images)


def ours(args, calib: torch.Tensor, work: Path) -> tuple[dict, torch.nn.Module]:
    """Our graphs from the checkpoint quantized in PyTorch on `calib`: exact, fast FP32, fast FP16."""
    fp32 = load_state_dict(build_model(), args.checkpoint, "resnet18").eval()
    int8 = quantize(fuse(fp32, tuple(calib.shape[1:]))[0], calib.split(128))
    exported = load_onnx(export_onnx(int8, work / contract.INT8_ONNX, calib[:1]))
    graphs = {"ours exact": make_graph(exported, "exact"), "ours fast, FP32 high precision": make_graph(exported, "fast"),
              "ours fast, FP16 high precision": make_graph(exported, "fast", "fp16")}
    files = {}
    for name, graph in graphs.items():
        if graph.refused:
            raise PipelineError(f"{name}: {graph.refused}")
        files[name] = work / f"{name.replace(' ', '_').replace(',', '')}.onnx"
        onnx.save(graph.model, str(files[name]))
    return files, int8


def run_modelopt(python: str, fp32_onnx: Path, calib_npy: Path, method: str, precision: str, out: Path) -> float:
    """ModelOpt's ONNX int8 PTQ of `fp32_onnx` on the images in `calib_npy` (CPU calibration); its wall time."""
    cmd = [python, "-m", "modelopt.onnx.quantization", "--onnx_path", str(fp32_onnx), "--quantize_mode", "int8",
           "--calibration_data_path", str(calib_npy), "--calibration_method", method, "--high_precision_dtype",
           precision, "--calibration_eps", "cpu", "--output_path", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not Path(out).is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PipelineError(f"ModelOpt failed for {method}/{precision} ({tail[0][:160]}); run {' '.join(cmd)}")
    return time.perf_counter() - t0


def modelopt(args, calib: torch.Tensor, work: Path) -> tuple[dict, dict]:
    """ModelOpt int8 graphs of the FP32 ONNX for each (calibration, high precision); and their wall times."""
    np.save(work / "calib.npy", calib.numpy())
    files, seconds = {}, {}
    for method, precision in MODELOPT_VARIANTS:
        name = f"ModelOpt {method}, {precision.upper()} high precision"
        print(f"running {name} ...", flush=True)
        files[name] = work / f"modelopt_{method}_{precision}.onnx"
        seconds[name] = run_modelopt(args.modelopt_python, args.fp32_onnx, work / "calib.npy", method, precision,
                                     files[name])
    return files, seconds


def logits_of(path: Path, batches: list) -> np.ndarray:
    return logits(OnnxRunner(path, optimize="all"), batches, desc=False)


def latency_ms(path: Path, runs: int) -> dict:
    """onnxruntime CPU batch-1 latency, 1 thread, full graph optimizations."""
    session = ort_session(path, optimize="all", threads=1)
    x = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, 32, 32), np.float32)}
    return measure(lambda: session.run(None, x), runs=runs, warmup=20)


def graph_row(name: str, path: Path, batches: list, labels: np.ndarray, ref: dict, runs: int) -> dict:
    """Accuracy, agreements, Q/DQ counts, fusable residual Adds, size and latency of one graph."""
    print(f"evaluating {name} ...", flush=True)
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    perf = performance_summary(model)
    logits = logits_of(path, batches)
    lat = latency_ms(path, runs)
    return {"graph": name, "accuracy": float((logits.argmax(1) == labels).mean()),
            "agreement_fp32": float((logits.argmax(1) == ref["fp32"]).mean()),
            "agreement_pytorch_int8": float((logits.argmax(1) == ref["pytorch_int8"]).mean()),
            "quantize_linear": ops.count("QuantizeLinear"), "dequantize_linear": ops.count("DequantizeLinear"),
            "fusable_residual_adds": f"{perf['fusable_residual_adds']}/{perf['residual_adds']}",
            "high_precision": perf["high_precision"], "size_mb": path.stat().st_size / 1e6,
            "latency_median_ms": lat["median_ms"], "latency_p99_ms": lat["p99_ms"]}


def markdown(rows: list, meta: dict) -> str:
    head = ("| graph | accuracy | agreement with FP32 | agreement with PyTorch INT8 | Q | DQ | fusable residual Adds "
            "| size (MB) | onnxruntime batch-1 median / p99 (ms) |\n|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(f"| {r['graph']} | {r['accuracy']:.4f} | {r['agreement_fp32']:.2%} | "
                   f"{r['agreement_pytorch_int8']:.2%} | {r.get('quantize_linear', '–')} | "
                   f"{r.get('dequantize_linear', '–')} | {r.get('fusable_residual_adds', '–')} | "
                   + (f"{r['size_mb']:.1f} | {r['latency_median_ms']:.2f} / {r['latency_p99_ms']:.2f} |\n"
                      if "size_mb" in r else "– | – |\n") for r in rows)
    env = meta["environment"]
    foot = (f"\n{meta['calib_images']} calibration images (the same for ours and ModelOpt), {meta['test_images']} "
            f"test images; ModelOpt {meta['modelopt']} (`--calibration_eps cpu`, wall time "
            + ", ".join(f"{k.split('ModelOpt ')[1]}: {v:.0f} s" for k, v in meta["modelopt_seconds"].items())
            + f"); onnxruntime {env.get('onnxruntime')}, torch {env['torch']} ({env['quantized_engine']} engine), "
            f"{env['cpu']}, {env['cpu_count']} cores; latency: 1 thread, {meta['runs']} runs, full optimizations.\n")
    return head + body + foot


def main(args) -> dict:
    version = modelopt_version(args.modelopt_python)
    fp32_onnx = load_onnx(args.fp32_onnx)  # fail early on a missing or broken file
    data = load_cifar10(args.data_dir)
    calib = calibration_images(data["train"], args.calib_images)
    batches = [x.numpy() for x, _ in iterate_batches(data["test"], 500)]
    labels = data["test"].labels.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        our_files, int8 = ours(args, calib, work)
        with torch.no_grad():
            pt_logits = torch.cat([int8(torch.from_numpy(b)) for b in batches]).numpy()
        mo_files, mo_seconds = modelopt(args, calib, work)
        fp32_logits = logits_of(fp32_onnx, batches)
        ref = {"fp32": fp32_logits.argmax(1), "pytorch_int8": pt_logits.argmax(1)}
        rows = [{"graph": "FP32 ONNX", "accuracy": float((ref["fp32"] == labels).mean()), "agreement_fp32": 1.0,
                 "agreement_pytorch_int8": float((ref["fp32"] == ref["pytorch_int8"]).mean())},
                {"graph": "PyTorch INT8 (ours, eager)", "accuracy": float((ref["pytorch_int8"] == labels).mean()),
                 "agreement_fp32": float((ref["fp32"] == ref["pytorch_int8"]).mean()), "agreement_pytorch_int8": 1.0}]
        rows += [graph_row(name, path, batches, labels, ref, args.runs) for name, path in {**our_files, **mo_files}.items()]
    meta = {"modelopt": version, "modelopt_seconds": mo_seconds, "calib_images": args.calib_images,
            "test_images": len(labels), "runs": args.runs, "environment": environment(),
            "fp32_onnx": str(args.fp32_onnx), "checkpoint": str(args.checkpoint)}
    table = markdown(rows, meta)
    write_json(args.output.with_suffix(".json"), {"rows": rows, **meta})
    with atomic_path(args.output.with_suffix(".md")) as tmp:
        tmp.write_text(table)
    print(table)
    return {"rows": rows, **meta}


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
