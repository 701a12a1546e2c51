"""Which quantized CPU engine computes what the exported Q/DQ graph computes? Fidelity and speed, one run.

For each model (variance-preserving random init, histogram-calibrated on random inputs) and each quantized
engine this torch build has: PyTorch INT8 vs its Q/DQ ONNX in onnxruntime (relative distance, argmax
agreement, distance ratio to the graph's own quantization error), PyTorch INT8 vs FP32, Q/DQ vs FP32, and
TorchScript INT8 batch-1 median latency at 1 and all threads. Writes OUTPUT_DIR/NAME.{json,md}, prints the
table last.
"""

import argparse
import os
import tempfile
import warnings
from pathlib import Path

import torch

from eager2trt.checks.agreement import distance_ratio
from eager2trt.checks.compare import argmax_agreement, relative_distance
from eager2trt.runtime.backends import as_runner, logits as run_logits
from eager2trt.runtime.inputs import random_batches
from eager2trt.artifacts import atomic_path, write_json
from eager2trt.eager.data import CIFAR10_CHW
from eager2trt.errors import require_choice, require_int, run_cli
from eager2trt.eager.export import export_onnx
from eager2trt.eager.model import ARCHS, build_model, fuse, variance_preserving_init
from eager2trt.eager.engines import supported_engines
from eager2trt.eager.quantize import quantize
from eager2trt.runtime.timing import environment, measure


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["resnet18", "mobilenet_v2"], help=f"any of {', '.join(ARCHS)}")
    p.add_argument("--engines", nargs="+", default=supported_engines(), help="quantized engines to compare")
    p.add_argument("--samples", type=int, default=64, help="random inputs for calibration and for the comparison")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the inputs")
    p.add_argument("--runs", type=int, default=200, help="timed batch-1 runs per latency figure")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=list(CIFAR10_CHW),
                   help="CHW of the random inputs (calibration, comparison, timing) and of the export")
    p.add_argument("--output-dir", type=Path, default=Path("bench/results"), help="where the table and JSON go")
    p.add_argument("--name", default="engines_cpu2", help="file stem of the .json and .md written")
    return p


def random_inputs(n: int, seed: int, batch: int = 8, chw: tuple = CIFAR10_CHW) -> list:
    return random_batches((batch, *chw), max(1, n // batch), seed + 1)


def logits(model, batches: list):
    return run_logits(as_runner(model), batches, desc=False).astype("float64")


def fidelity(int8, onnx_path: Path, fp32_logits, batches: list) -> dict:
    """The issue's four figures plus the distance ratio the pipeline's random-input bound uses."""
    pt, graph = logits(int8, batches), logits(onnx_path, batches)
    return {"pytorch_vs_graph_relative": relative_distance(pt, graph), "argmax_agreement": argmax_agreement(pt, graph),
            "pytorch_vs_fp32_relative": relative_distance(pt, fp32_logits),
            "graph_vs_fp32_relative": relative_distance(graph, fp32_logits),
            "distance_ratio": distance_ratio(pt, graph, fp32_logits)}


def latency(int8, runs: int, chw: tuple = CIFAR10_CHW) -> dict:
    """TorchScript INT8 batch-1 median ms at 1 thread and at all threads."""
    x = torch.randn(1, *chw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(int8, x)
    default, out = torch.get_num_threads(), {"load_1min": os.getloadavg()[0]}
    with torch.no_grad():
        for threads in sorted({1, default}):
            torch.set_num_threads(threads)
            out[f"torchscript_{threads}t_ms"] = measure(lambda: traced(x), runs=runs, warmup=20)["median_ms"]
    torch.set_num_threads(default)
    return out


def measure_arch(arch: str, engines: list, args, workdir: Path) -> list:
    torch.manual_seed(args.seed)
    fp32 = variance_preserving_init(build_model(arch)).eval()
    batches = random_inputs(args.samples, args.seed, chw=tuple(args.input_size))
    fused, _ = fuse(fp32, tuple(batches[0].shape[1:]))
    fp32_logits = logits(fp32, batches)
    rows = []
    for engine in engines:
        int8 = quantize(fused, batches, engine=engine)
        onnx_path = export_onnx(int8, workdir / f"{arch}_{engine}.onnx", batches[0])
        row = {"arch": arch, "engine": engine, **fidelity(int8, onnx_path, fp32_logits, batches),
               **latency(int8, args.runs, tuple(args.input_size))}
        print(row, flush=True)
        rows.append(row)
    return rows


def markdown(rows: list, env: dict, args) -> str:
    threads = sorted({k for r in rows for k in r if k.startswith("torchscript_")},
                     key=lambda k: int(k.split("_")[1][:-1]))
    load = ", ".join(f"{x:.1f}" for x in env["load_average_1_5_15min"])
    lines = [f"Machine: {env['cpu']} ({env['cpu_count']} cores, load average {load} when the run ended), torch "
             f"{env['torch']}, onnxruntime {env.get('onnxruntime')}. Random init (kaiming normal, fan_in), histogram "
             f"calibration and comparison on the same {args.samples} random {'x'.join(map(str, args.input_size))} "
             f"inputs (seed {args.seed}); Q/DQ ONNX "
             f"run in onnxruntime without graph optimizations; quint8 per-tensor-symmetric activations, per-channel int8 weights in [-127, 127].",
             "", "| model | engine | PyTorch INT8 vs Q/DQ ONNX, relative | argmax agreement | distance ratio "
             "(PyTorch-to-graph / smaller INT8-to-FP32) | PyTorch INT8 vs FP32 | Q/DQ ONNX vs FP32 | "
             + " | ".join(f"TorchScript INT8 batch 1, {k.split('_')[1][:-1]} thread(s), ms" for k in threads)
             + " | machine load (1 min) |", "|---|---|---|---|---|---|---|" + "---|" * (len(threads) + 1)]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['engine']} | {r['pytorch_vs_graph_relative']:.3f} | "
                     f"{r['argmax_agreement']:.3f} | {r['distance_ratio']:.2f} | {r['pytorch_vs_fp32_relative']:.3f} | "
                     f"{r['graph_vs_fp32_relative']:.3f} | " + " | ".join(f"{r[k]:.2f}" for k in threads)
                     + f" | {r['load_1min']:.1f} |")
    return "\n".join(lines) + "\n"


def check_args(args) -> None:
    """Reject bad options before any model is built (one sentence naming the flag)."""
    for arch in args.archs:
        require_choice("--archs", arch, ARCHS)
    require_int("--samples", args.samples)
    require_int("--seed", args.seed, minimum=0)
    require_int("--runs", args.runs)
    for v in args.input_size:
        require_int("--input-size", v)


def main(args) -> list:
    check_args(args)
    engines = [e for e in args.engines if e in supported_engines()]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for arch in args.archs for r in measure_arch(arch, engines, args, Path(tmp))]
    env = {**environment(), "load_average_1_5_15min": os.getloadavg()}  # other jobs on the machine skew latency
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.output_dir / f"{args.name}.json", {"environment": env, "args": {**vars(args), "output_dir": str(
        args.output_dir)}, "rows": rows})
    table = markdown(rows, env, args)
    with atomic_path(args.output_dir / f"{args.name}.md") as tmp:
        tmp.write_text(table)
    print(table)
    return rows


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
