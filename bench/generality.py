"""Every torchvision quantizable classifier at a non-CIFAR size through quantize_to_tensorrt, as one table.

For each model (variance-preserving random init, seeded random calibration images at the requested size) the
library's one entry point runs as a user would call it: eager2trt.pipeline.quantize_to_tensorrt(fp32,
calibration, out, QuantizeConfig(calibration="percentile", engine="auto"), fast="fp32"). Its checks decide
(fusion, agreement and scale provenance, lint, exact equivalence or the exact rewrite's recorded refusal, the
fast graph's lint with the performance rules as errors and its error ratio against FP32); this script only
reads the PipelineResult into a row. A run that fails (PipelineError) is a row "FAILED: <sentence>" and the
command exits 2 at the end. Writes OUTPUT_DIR/NAME.{json,md} and prints the table last.
tests/test_generality.py runs the same `run_model` per model.
"""

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import onnx
import torch

from eager2trt.artifacts import atomic_path, write_json
from eager2trt.eager.model import ARCHS, build_model, variance_preserving_init
from eager2trt.errors import PipelineError, require_choice, require_int, run_cli
from eager2trt.graph.onnx_utils import load_onnx
from eager2trt.pipeline import PipelineResult, QuantizeConfig, quantize_to_tensorrt
from eager2trt.runtime.inputs import random_batches
from eager2trt.runtime.timing import environment

MATRIX = ("resnet18", "resnet50", "resnext101_32x8d", "mobilenet_v2", "mobilenet_v3_large", "shufflenet_v2_x0_5",
          "shufflenet_v2_x1_0", "googlenet", "inception_v3")
MIN_SIZE = {"inception_v3": 75}  # measured: 74 px ends in a 2x2 map under a 3x3 kernel
CONFIG = QuantizeConfig(calibration="percentile", engine="auto")


@dataclass
class Conversion:
    """One model through quantize_to_tensorrt: its result (None when it failed) and the table row."""

    arch: str
    size: int
    result: Optional[PipelineResult]
    row: dict = field(default_factory=dict)


def _qdq(model: Optional[onnx.ModelProto]) -> str:
    if model is None:
        return "-"
    ops = [n.op_type for n in model.graph.node]
    return f"{ops.count('QuantizeLinear')}/{ops.count('DequantizeLinear')}"


def _check(checks: list, name: str):
    return next((c for c in checks if c.name == name), None)


def row_of(arch: str, size: int, result: PipelineResult) -> dict:
    """The table row read from a PipelineResult: every figure is one the pipeline's own checks computed."""
    exact, fast = result.graphs["exact"], result.graphs["fast"]
    row = {"model": arch, "size": size, "engine": result.engine}
    if exact.path is not None:
        row.update(exact="ok", exact_max_abs_diff=_check(exact.checks, "equivalence").value,
                   exact_qdq=_qdq(exact.model))
    else:
        row.update(exact=f"refused ({exact.refused_kind or 'not made'})", exact_reason=exact.refused, exact_qdq="-")
    perf, ratio = fast.performance, _check(fast.checks, "fast_error_ratio")
    agreement, provenance = result.check("agreement"), result.check("scale_provenance")
    row.update(fast="ok" if fast.path is not None else f"not made ({fast.refused})",
               fast_error_ratio=ratio.figures["ratio"], fast_error_samples=ratio.figures["samples"],
               fusable_adds=f"{perf['fusable_residual_adds']}/{perf['residual_adds']}",
               predicted_unfused=perf["predicted_unfused_layers"], requantize_layers=perf["requantize_layers"],
               unfused_elementwise=perf["unfused_elementwise"], export_qdq=_qdq(load_onnx(result.paths.int8_onnx)),
               fast_qdq=_qdq(fast.model),
               rewrites={k: v for k, v in fast.report.get("rewrites", {}).items() if v and k != "fold_constant_inputs"},
               agreement="ok" if agreement.passed and provenance.passed else "FAILED",
               agreement_ratio=agreement.figures.get("distance_ratio"),
               agreement_balance=agreement.figures.get("balance"))
    return row


def run_model(arch: str, size: int, work: Path, batch: int = 2, calib_batches: int = 2, seed: int = 0) -> Conversion:
    """`arch` at `size` px (raised to the model's minimum) through quantize_to_tensorrt into `work`; a
    PipelineError is recorded in the row ("FAILED: <sentence>"), not raised, so the table can show it."""
    t0 = time.time()
    size = max(size, MIN_SIZE.get(arch, 0))
    calib = random_batches((batch, 3, size, size), n=calib_batches, seed=seed + 1)
    torch.manual_seed(seed)
    fp32 = variance_preserving_init(build_model(arch)).eval()
    try:
        result = quantize_to_tensorrt(fp32, calib, work, CONFIG, fast="fp32")
        row = row_of(arch, size, result)
    except PipelineError as exc:
        result, row = None, {"model": arch, "size": size, "exact": f"FAILED: {exc}", "fast": "FAILED"}
    row["seconds"] = round(time.time() - t0, 1)
    return Conversion(arch, size, result, row)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", nargs="+", default=list(MATRIX), help=f"any of {', '.join(ARCHS)}")
    p.add_argument("--size", type=int, default=96, help="input image size in pixels")
    p.add_argument("--inception-size", type=int, default=299, help="input size for inception_v3")
    p.add_argument("--batch", type=int, default=2, help="batch size of the calibration batches")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--output-dir", type=Path, default=Path("bench/results"), help="where the table and JSON go")
    p.add_argument("--name", default="generality", help="file stem of the .json and .md written")
    return p


COLUMNS = ("model", "size", "exact", "fast", "fusable_adds", "predicted_unfused", "requantize_layers",
           "export_qdq", "exact_qdq", "fast_qdq", "fast_error_ratio", "agreement", "seconds")


def table(rows: list, columns: tuple = COLUMNS) -> str:
    def cell(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(output_dir: Path, name: str, command: str, rows: list, columns: tuple, what: str) -> str:
    """NAME.json (command, machine, rows) and NAME.md (the command, what was run, the machine, the table) in
    `output_dir`; returns the table."""
    env = environment()
    write_json(output_dir / f"{name}.json", {"command": command, "environment": env, "rows": rows})
    text = table(rows, columns)
    machine = f"{env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}, onnxruntime {env['onnxruntime']}"
    if env.get("gpu"):
        machine += f", GPU {env['gpu']}"
    with atomic_path(output_dir / f"{name}.md") as tmp_path:
        Path(tmp_path).write_text(f"`{command}` {what}; {machine}\n\n{text}\n")
    return text


def failed(row: dict) -> bool:
    return str(row.get("exact", "")).startswith("FAILED")


def main(args) -> int:
    for arch in args.archs:
        require_choice("--archs", arch, ARCHS)
    for flag in ("size", "inception_size", "batch", "threads"):
        require_int(f"--{flag.replace('_', '-')}", getattr(args, flag))
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            size = args.inception_size if arch == "inception_v3" else args.size
            rows.append(run_model(arch, size, Path(tmp) / arch, batch=args.batch).row)
            print(f"{arch}: {rows[-1]['seconds']} s{' (FAILED)' if failed(rows[-1]) else ''}", flush=True)
    command = (f"python -m bench.generality --archs {' '.join(args.archs)} --size {args.size} "
               f"--inception-size {args.inception_size} --batch {args.batch} --threads {args.threads}")
    config = {"calibration": CONFIG.calibration, "engine": CONFIG.engine, "fast": "fp32"}
    write_json(args.output_dir / f"{args.name}.json",
               {"command": command, "quantize_config": config, "environment": environment(), "rows": rows})
    text = table(rows)
    reasons = [f"- {r['model']}: {r['exact_reason']}" for r in rows if "exact_reason" in r]
    with atomic_path(args.output_dir / f"{args.name}.md") as tmp_path:
        Path(tmp_path).write_text(f"`{command}` through `quantize_to_tensorrt` (QuantizeConfig(calibration="
                                  f"\"{CONFIG.calibration}\", engine=\"{CONFIG.engine}\"), fast=\"fp32\"; Q/DQ: "
                                  f"QuantizeLinear/DequantizeLinear nodes)\n\n{text}\n\n"
                                  + ("Exact refused:\n" + "\n".join(reasons) + "\n" if reasons else ""))
    print(text)
    return 2 if any(failed(r) for r in rows) else 0


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main(get_args_parser().parse_args())))
