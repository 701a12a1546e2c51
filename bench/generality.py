"""Every torchvision quantizable classifier at a non-CIFAR size through the graph-level path, as one table.

For each model (variance-preserving random init, calibrated with qnnpack on random images): fuse, quantize,
export FP32 and INT8 ONNX, the exact rewrite (or the reason it is refused), the fast placement, TensorRT lint
with the performance rules as errors, exact equivalence, the fast graph's error ratio against FP32, and the
agreement rule (PyTorch INT8 vs its graph, plus the scale provenance). Writes OUTPUT_DIR/NAME.{json,md} and
prints the table last. tests/test_generality.py runs the same `convert` per model.
"""

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import onnx
import torch

from eager2trt.artifacts import atomic_path, write_json
from eager2trt.checks.agreement_rule import agreement_rule, graph_activation_scales, model_activation_scales, scales_agree
from eager2trt.checks.compare import equivalence, error_ratio
from eager2trt.eager.export import export_onnx
from eager2trt.eager.model import ARCHS, build_model, fuse, variance_preserving_init
from eager2trt.eager.quantize import quantize
from eager2trt.errors import run_cli
from eager2trt.graph import lint
from eager2trt.graph.onnx_utils import load_onnx
from eager2trt.graph.placement import make_fast
from eager2trt.graph.surgery import exact_refusal, make_tensorrt_ready
from eager2trt.runtime.backends import as_runner, logits
from eager2trt.runtime.timing import environment

MATRIX = ("resnet18", "resnet50", "resnext101_32x8d", "mobilenet_v2", "mobilenet_v3_large", "shufflenet_v2_x0_5",
          "shufflenet_v2_x1_0", "googlenet", "inception_v3")
MIN_SIZE = {"inception_v3": 75}  # measured: 74 px ends in a 2x2 map under a 3x3 kernel


@dataclass
class Conversion:
    """One model through the graph-level path: the graphs, every check's figures, and the table row."""

    arch: str
    size: int
    original: onnx.ModelProto
    fast: onnx.ModelProto
    exact: Optional[onnx.ModelProto]
    refusal: Optional[str]
    row: dict = field(default_factory=dict)


def _qdq(model: onnx.ModelProto) -> str:
    ops = [n.op_type for n in model.graph.node]
    return f"{ops.count('QuantizeLinear')}/{ops.count('DequantizeLinear')}"


def _logits(model, batches: list):
    """Logits of a torch module or an ONNX model (graph as written) through the project's one loop."""
    return logits(as_runner(model), batches, desc=False)


def _errors(findings: dict) -> list:
    return [f for fs in findings.values() for f in fs if f.level == "error"]


def convert(arch: str, size: int, work: Path, batch: int = 2, calib_batches: int = 2, check_batches: int = 8,
            seed: int = 0) -> Conversion:
    """Run `arch` at `size` px (raised to the model's minimum) through every graph-level step; checks record,
    they do not raise, so the table can show what failed. The checks run on `check_batches` x `batch` random
    inputs: 16 by default, as the pipeline's fast-graph bound does (with 4, the error ratio of a random network
    varies by +-0.4 from one draw to the next: GoogLeNet at 96 px 1.32 on 4 inputs, 0.85 on 16)."""
    t0 = time.time()
    size = max(size, MIN_SIZE.get(arch, 0))
    shape = (3, size, size)
    gen = torch.Generator().manual_seed(seed + 1)
    calib = [torch.randn(batch, *shape, generator=gen) for _ in range(calib_batches)]
    inputs = [torch.randn(batch, *shape, generator=gen) for _ in range(check_batches)]
    torch.manual_seed(seed)
    fp32 = variance_preserving_init(build_model(arch)).eval()
    fused, _ = fuse(fp32, shape)
    int8 = quantize(fused, calib, engine="qnnpack")
    fp32_onnx = load_onnx(export_onnx(fp32, work / f"{arch}_fp32.onnx", calib[0]))
    original = load_onnx(export_onnx(int8, work / f"{arch}_int8.onnx", calib[0]))
    refused = exact_refusal(original)
    graph_logits = _logits(original, inputs)
    exact, row = None, {"model": arch, "size": size}
    if refused is None:
        exact, _ = make_tensorrt_ready(original)
        eq = equivalence(graph_logits, _logits(exact, inputs))
        row.update(exact="ok" if eq.passed and not _errors(lint.lint(exact)) else "FAILED",
                   exact_max_abs_diff=eq.figures["max_abs_diff"], exact_qdq=_qdq(exact))
    else:
        row.update(exact=f"refused ({refused.kind})", exact_reason=str(refused), exact_qdq="-")
    fast, report = make_fast(original)
    found = lint.lint(fast, performance="error")
    summary = lint.performance_summary(fast)
    fp32_logits = _logits(fp32_onnx, inputs)
    ratio = error_ratio(fp32_logits, graph_logits, _logits(fast, inputs))
    torch.backends.quantized.engine = "qnnpack"
    rule = agreement_rule(_logits(int8, inputs), graph_logits, _logits(fp32, inputs))
    provenance = scales_agree(model_activation_scales(int8), graph_activation_scales(original))
    errors = _errors(found)
    row.update(fast="ok" if not errors and ratio.passed else "FAILED", fast_lint_errors=len(errors),
               fast_error_ratio=ratio.figures["ratio"], fusable_adds=f"{summary['fusable_residual_adds']}/{summary['residual_adds']}",
               predicted_unfused=summary["predicted_unfused_layers"], requantize_layers=summary["requantize_layers"],
               unfused_elementwise=summary["unfused_elementwise"], export_qdq=_qdq(original), fast_qdq=_qdq(fast),
               rewrites={k: v for k, v in report["rewrites"].items() if v and k != "fold_constant_inputs"},
               agreement="ok" if rule.passed and provenance.passed else "FAILED",
               agreement_ratio=rule.figures["distance_ratio"], agreement_balance=rule.figures["balance"],
               seconds=round(time.time() - t0, 1))
    return Conversion(arch, size, original, fast, exact, None if refused is None else str(refused), row)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", nargs="+", default=list(MATRIX), help=f"any of {', '.join(ARCHS)}")
    p.add_argument("--size", type=int, default=96, help="input image size in pixels")
    p.add_argument("--inception-size", type=int, default=299, help="input size for inception_v3")
    p.add_argument("--batch", type=int, default=2, help="batch size of the calibration and check batches")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--output-dir", type=Path, default=Path("bench/results"), help="where the table and JSON go")
    p.add_argument("--name", default="generality_cpu2", help="file stem of the .json and .md written")
    return p


COLUMNS = ("model", "size", "exact", "fast", "fusable_adds", "predicted_unfused", "requantize_layers",
           "export_qdq", "exact_qdq", "fast_qdq", "fast_error_ratio", "agreement", "seconds")


def table(rows: list) -> str:
    def cell(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(args) -> None:
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            size = args.inception_size if arch == "inception_v3" else args.size
            rows.append(convert(arch, size, Path(tmp), batch=args.batch).row)
            print(f"{arch}: {rows[-1]['seconds']} s", flush=True)
    command = (f"python bench/generality.py --archs {' '.join(args.archs)} --size {args.size} "
               f"--inception-size {args.inception_size} --batch {args.batch} --threads {args.threads}")
    write_json(args.output_dir / f"{args.name}.json", {"command": command, "environment": environment(), "rows": rows})
    text = table(rows)
    reasons = [f"- {r['model']}: {r['exact_reason']}" for r in rows if "exact_reason" in r]
    with atomic_path(args.output_dir / f"{args.name}.md") as tmp_path:
        Path(tmp_path).write_text(f"`{command}` (Q/DQ: QuantizeLinear/DequantizeLinear nodes)\n\n{text}\n\n"
                                  + ("Exact refused:\n" + "\n".join(reasons) + "\n" if reasons else ""))
    print(text)


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
