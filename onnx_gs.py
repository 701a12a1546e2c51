"""Make the INT8 ONNX from resnet_torch.py TensorRT-ready (int8 symmetric Q/DQ) and prove it.

Rewrites by graph pattern, then lints the result against TensorRT's explicit-quantization rules and
checks in onnxruntime that it computes the same logits as the original.
"""

import argparse
from pathlib import Path

import onnx

from eager2trt import paths
from eager2trt.artifacts import ensure_writable_dir, output_lock, save_onnx, update_metrics
from eager2trt.errors import PipelineError, require_float, run_cli
from eager2trt.lint import as_json, lint, print_lint
from eager2trt.surgery import load_onnx, make_tensorrt_ready
from eager2trt.verify import EQUIVALENCE_ATOL, equivalence, input_shape, random_batches, image_batches


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", type=Path, default=paths.OUTPUT_DIR / paths.INT8_ONNX,
                   help="Q/DQ ONNX from resnet_torch.py")
    p.add_argument("--output", type=Path, default=paths.OUTPUT_DIR / paths.INT8_ONNX_MODIFIED,
                   help="TensorRT-ready ONNX")
    p.add_argument("--data-dir", type=Path, help="also check equivalence on the real CIFAR-10 test images")
    p.add_argument("--no-verify", action="store_true", help="skip the lint and the equivalence check")
    p.add_argument("--allow-fp32", action="store_true", help="pass a graph with no Q/DQ through instead of failing")
    p.add_argument("--atol", type=float, default=EQUIVALENCE_ATOL, help="equivalence bound on max abs difference")
    p.add_argument("--metrics", type=Path, default=paths.OUTPUT_DIR / paths.METRICS, help="metrics JSON to update")
    return p


def print_report(report: dict) -> None:
    print("rewrites applied:")
    for name, count in report["rewrites"].items():
        print(f"  {name}: {count}")
    ops = sorted(set(report["ops_before"]) | set(report["ops_after"]))
    print(f"  {'op':<20}{'before':>8}{'after':>8}")
    for op in ops:
        print(f"  {op:<20}{report['ops_before'].get(op, 0):>8}{report['ops_after'].get(op, 0):>8}")


def verify(original: onnx.ModelProto, modified: onnx.ModelProto, args) -> dict:
    """Lint and equivalence (random inputs, plus the test set with --data-dir); raise if either fails."""
    print("TensorRT explicit-quantization lint:")
    findings = lint(modified)
    lint_ok = print_lint(findings)
    batches = random_batches(shape=input_shape(original))
    if args.data_dir is not None:
        from eager2trt.data import load_cifar10
        batches += image_batches(load_cifar10(args.data_dir)["test"])
    eq = equivalence(original, modified, batches, atol=args.atol)
    print(f"equivalence on {eq['samples']} inputs (onnxruntime, no graph optimizations): max abs difference "
          f"{eq['max_abs_diff']:.3g} (bound {eq['atol']:g}), argmax agreement {eq['argmax_agreement']:.4%}")
    result = {"lint_ok": lint_ok, "lint": as_json(findings), "equivalence": eq}
    if not lint_ok:
        raise PipelineError(f"{args.output} breaks TensorRT's explicit-quantization rules (see FAIL lines above); "
                            f"the surgery does not handle this graph yet")
    if not eq["ok"]:
        raise PipelineError(f"the rewritten graph deviates from the original by {eq['max_abs_diff']:.3g} "
                            f"(> {eq['atol']:g}); it is not the same model")
    return result


def validate(args) -> None:
    """Reject bad options before any work starts."""
    require_float("--atol", args.atol)
    ensure_writable_dir(args.output.parent, "--output")
    ensure_writable_dir(args.metrics.parent, "--metrics")


def main(args) -> dict:
    validate(args)
    with output_lock(args.output.parent, args.metrics.parent):
        return run(args)


def run(args) -> dict:
    """Rewrite, verify, then write the checked model and its metrics (output folders locked by main)."""
    original = load_onnx(args.input)
    modified, report = make_tensorrt_ready(original, allow_fp32=args.allow_fp32)
    print_report(report)
    if not args.no_verify:
        report["verification"] = verify(original, modified, args)
    save_onnx(modified, args.output)
    print(f"wrote {args.output}")
    update_metrics(args.metrics, "onnx_gs", {**report, "input": str(args.input), "output": str(args.output)})
    return report


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
