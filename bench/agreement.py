"""Why does PyTorch INT8 drift from its Q/DQ graph on deep models, and where must the agreement bound sit?

For each model (variance-preserving random init, histogram-calibrated on random images of --size px) this
measures, on --samples random inputs: the relative distances PyTorch INT8 - graph, PyTorch INT8 - FP32 and
graph - FP32 with each faithful engine (onednn, qnnpack; the graph is exported once, from the qnnpack model,
and both engines quantize with the same observers on the same batches), the two engines against each other,
the graph's own sensitivity to a one-step change of its input rounding (the same graph on inputs moved by
1/100 of the input quantization step: how far last-bit flips travel through this network), and two foreign
graphs (another calibration of the same weights, and another model of the same architecture). Optionally
the shipped trained checkpoint on real CIFAR-10 test images. Writes OUTPUT_DIR/NAME.{json,md}; the table
prints last. docs/agreement.md reads it.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from eager2trt.artifacts import atomic_path, write_json
from eager2trt.checks.compare import argmax_agreement, relative_distance
from eager2trt.checks.agreement_rule import agreement_rule
from eager2trt.eager.export import export_onnx
from eager2trt.eager.model import ARCHS, build_model, fuse, load_state_dict, variance_preserving_init
from eager2trt.eager.quantize import quantize
from eager2trt.errors import run_cli
from eager2trt.runtime.backends import as_runner
from eager2trt.runtime.backends import logits as run_logits
from eager2trt.runtime.timing import environment

ENGINES = ("qnnpack", "onednn")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"], help=f"any of {', '.join(ARCHS)}")
    p.add_argument("--size", type=int, default=96, help="input image size (inception_v3 takes max(size, 75))")
    p.add_argument("--samples", type=int, default=8, help="random inputs compared (batches of 2)")
    p.add_argument("--calibration", type=int, default=4, help="random calibration images (batches of 2)")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the inputs")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="also the trained resnet18 checkpoint on real CIFAR-10 test images (default: skip)")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/cifar10"), help="CIFAR-10 folder for --checkpoint")
    p.add_argument("--real-samples", type=int, default=500, help="real test images for --checkpoint")
    p.add_argument("--output-dir", type=Path, default=Path("bench/results"), help="where the table and JSON go")
    p.add_argument("--name", default="agreement_cpu2", help="file stem of the .json and .md written")
    return p


def batches(n: int, shape: tuple, seed: int, batch: int = 2) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *shape, generator=gen) for _ in range(max(1, n // batch))]


def logits(model, batches: list) -> np.ndarray:
    """Float64 logits of a torch module or an ONNX model (graph as written) through the project's one loop."""
    return run_logits(as_runner(model), batches, desc=False).astype(np.float64)


def figures(pt: np.ndarray, graph: np.ndarray, fp32: np.ndarray, real: bool = False) -> dict:
    """The three relative distances, argmax agreement and the rule's verdict."""
    rule = agreement_rule(pt, graph, fp32, real=real)
    return {"pytorch_vs_graph": relative_distance(pt, graph), "pytorch_vs_fp32": relative_distance(pt, fp32),
            "graph_vs_fp32": relative_distance(graph, fp32), "argmax_agreement": argmax_agreement(pt, graph),
            "distance_ratio": rule.figures["distance_ratio"], "rule_passed": rule.passed}


def random_model_row(arch: str, size: int, args, work: Path) -> dict:
    """Every figure of one random-init model at one size."""
    t0 = time.time()
    size = max(size, 75) if arch == "inception_v3" else size
    shape = (3, size, size)
    torch.manual_seed(args.seed)
    fp32 = variance_preserving_init(build_model(arch)).eval()
    fused, _ = fuse(fp32, shape)
    calib = batches(args.calibration, shape, args.seed + 1)
    inputs = batches(args.samples, shape, args.seed + 2)
    f = logits(fp32, inputs)
    int8 = {e: quantize(fused, calib, engine=e) for e in ENGINES}
    graph_path = export_onnx(int8["qnnpack"], work / f"{arch}.onnx", example=calib[0])
    torch.backends.quantized.engine = "qnnpack"
    g = logits(graph_path, inputs)
    pt = {}
    for e in ENGINES:
        torch.backends.quantized.engine = e
        pt[e] = logits(int8[e], inputs)
    row = {"arch": arch, "size": size, "samples": int(f.shape[0]), "logit_rms": float(np.sqrt((f ** 2).mean())),
           **{e: figures(pt[e], g, f) for e in ENGINES},
           "onednn_vs_qnnpack": relative_distance(pt["onednn"], pt["qnnpack"])}
    # how far a change of the input rounding travels: the same graph on inputs moved by 1% of the input step
    scale = _input_scale(graph_path)
    nudged = [x + 0.01 * scale * torch.randn(x.shape, generator=torch.Generator().manual_seed(9)) for x in inputs]
    row["graph_input_nudge"] = relative_distance(logits(graph_path, nudged), g)
    # foreign graphs: another calibration of the same weights, another model of the same architecture
    torch.backends.quantized.engine = "qnnpack"
    other_cal = export_onnx(quantize(fused, batches(args.calibration, shape, args.seed + 7), engine="qnnpack"),
                            work / f"{arch}_othercal.onnx", example=calib[0])
    torch.manual_seed(args.seed + 1)
    other_fused, _ = fuse(variance_preserving_init(build_model(arch)).eval(), shape)
    other_model = export_onnx(quantize(other_fused, calib, engine="qnnpack"), work / f"{arch}_othermodel.onnx",
                              example=calib[0])
    torch.backends.quantized.engine = "qnnpack"
    row["foreign_calibration"] = figures(pt["qnnpack"], logits(other_cal, inputs), f)
    row["foreign_model"] = figures(pt["qnnpack"], logits(other_model, inputs), f)
    row["seconds"] = round(time.time() - t0, 1)
    return row


def _input_scale(path: Path) -> float:
    """Scale of the graph input's QuantizeLinear (the first Q reading the graph input)."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(onnx.load(str(path)))
    graph.fold_constants()
    q = next(n for n in graph.nodes if n.op == "QuantizeLinear" and n.inputs[0] is graph.inputs[0])
    return float(np.asarray(q.inputs[1].values))


def trained_row(args, work: Path) -> list:
    """The shipped checkpoint on real test images and on random inputs, with each faithful engine."""
    from eager2trt.eager.data import calibration_batches, iterate_batches, load_cifar10

    data = load_cifar10(args.data_dir)
    real = [x for x, _ in iterate_batches(data["test"].subset(args.real_samples), 100)]
    shape = tuple(real[0].shape[1:])
    fp32 = load_state_dict(build_model("resnet18"), args.checkpoint, "resnet18").eval()
    fused, _ = fuse(fp32, shape)
    calib = list(calibration_batches(data["train"], 128, limit=10))
    int8 = {e: quantize(fused, calib, engine=e) for e in ENGINES}
    graph_path = export_onnx(int8["qnnpack"], work / "trained.onnx", example=calib[0])
    rows = []
    for kind, inputs in (("real", real), ("random", batches(64, shape, args.seed + 2, batch=32))):
        f, g = logits(fp32, inputs), logits(graph_path, inputs)
        row = {"arch": "resnet18 (trained)", "size": shape[-1], "inputs": kind, "samples": int(f.shape[0])}
        for e in ENGINES:
            torch.backends.quantized.engine = e
            row[e] = figures(logits(int8[e], inputs), g, f, real=kind == "real")
        rows.append(row)
    return rows


def table(rows: list) -> str:
    head = ("| model | px | inputs | engine | PT-graph | PT-FP32 | graph-FP32 | ratio | argmax | rule | "
            "onednn-qnnpack | input nudge | other calibration ratio (rule) | other model ratio (rule) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        for e in ENGINES:
            x = r[e]
            extra = ["", "", "", ""]
            if e == "qnnpack" and "foreign_model" in r:
                fc, fm = r["foreign_calibration"], r["foreign_model"]
                extra = [f"{r['onednn_vs_qnnpack']:.4f}", f"{r['graph_input_nudge']:.4f}",
                         f"{fc['distance_ratio']:.2f} ({'pass' if fc['rule_passed'] else 'fail'})",
                         f"{fm['distance_ratio']:.1f} ({'pass' if fm['rule_passed'] else 'fail'})"]
            lines.append(f"| {r['arch']} | {r['size']} | {r.get('inputs', 'random')} | {e} | {x['pytorch_vs_graph']:.4f} | "
                         f"{x['pytorch_vs_fp32']:.4f} | {x['graph_vs_fp32']:.4f} | {x['distance_ratio']:.2f} | "
                         f"{x['argmax_agreement']:.3f} | {'pass' if x['rule_passed'] else 'fail'} | " + " | ".join(extra) + " |")
    return "\n".join(lines)


def main(args) -> None:
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            rows.append(random_model_row(arch, args.size, args, Path(tmp)))
            print(f"{arch}: done in {rows[-1]['seconds']} s", flush=True)
        if args.checkpoint:
            rows += trained_row(args, Path(tmp))
    command = (f"python -m bench.agreement --archs {' '.join(args.archs)} --size {args.size} --samples {args.samples}"
               + (f" --checkpoint {args.checkpoint}" if args.checkpoint else ""))
    record = {"command": command,
              "environment": environment(), "rows": rows}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{args.name}.json", record)
    text = table(rows)
    with atomic_path(out / f"{args.name}.md") as tmp_path:
        Path(tmp_path).write_text(f"`{record['command']}`\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
