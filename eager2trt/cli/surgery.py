"""Make the INT8 ONNX from resnet_torch.py TensorRT-ready (int8 symmetric Q/DQ) and prove it.

Rewrites by graph pattern, then lints the result against TensorRT's explicit-quantization rules and
checks in onnxruntime that it computes the same logits as the original (--mode exact), or (--mode fast:
the Q/DQ placement TensorRT fuses best) that it keeps PyTorch INT8's accuracy.
"""

import argparse
from pathlib import Path
from typing import Optional

import numpy as np
import onnx

from .. import contract
from ..reports import metrics
from ..artifacts import ensure_writable_dir, output_lock, save_onnx
from ..errors import PipelineError, require_choice, require_float, run_cli
from ..graph.lint import as_json, lint, performance_summary, print_lint, print_performance
from ..graph.placement import HIGH_PRECISIONS, make_fast, with_high_precision
from ..graph.onnx_utils import load_onnx
from ..graph.surgery import make_tensorrt_ready
from ..contract import EQUIVALENCE_ATOL, FAST_ACCURACY_DROP
from ..checks.compare import (equivalence, error_ratio, image_batches, input_shape, ort_accuracy, random_batches)

MODES = ("exact", "fast")
FP16_LOSS_NOTE = ("onnxruntime runs QuantizeLinear on FP16 inputs in FP16 arithmetic, which TensorRT's fused INT8 "
                  "kernels need not do, so this loss may not exist in an engine; it cannot be measured here")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", type=Path, default=contract.OUTPUT_DIR / contract.INT8_ONNX,
                   help="Q/DQ ONNX from resnet_torch.py (or your own PyTorch INT8 export)")
    p.add_argument("--output", type=Path, help=f"when omitted: {contract.OUTPUT_DIR / contract.INT8_ONNX_MODIFIED} (exact), "
                                                f"{contract.OUTPUT_DIR / contract.INT8_ONNX_FAST} (fast)")
    p.add_argument("--mode", default="exact", choices=MODES,
                   help="exact: the export's arithmetic bit for bit; fast: also move and drop Q/DQ so TensorRT fuses "
                        "Conv+Add+ReLU (held to PyTorch INT8 accuracy instead of bit-exactness)")
    p.add_argument("--high-precision", default="fp32", choices=HIGH_PRECISIONS,
                   help="fast mode: type of scales, biases and non-INT8 compute (fp16: opset 19, float32 I/O kept)")
    p.add_argument("--data-dir", type=Path, help="also check on the real CIFAR-10 test images (exact: equivalence; "
                                                 "fast: accuracy against PyTorch INT8)")
    p.add_argument("--fp32", type=Path, help="fast mode without --data-dir: FP32 ONNX for the random-input error "
                                             f"check (when omitted: {contract.FP32_ONNX} beside --input when it is named "
                                             f"{contract.INT8_ONNX})")
    p.add_argument("--torchscript", type=Path, help="fast mode: PyTorch INT8 TorchScript for argmax agreement "
                                                    f"(when omitted: {contract.INT8_TORCHSCRIPT} beside --input when it is named "
                                                    f"{contract.INT8_ONNX}, else the exported INT8 graph's logits)")
    p.add_argument("--no-verify", action="store_true", help="skip the lint and the equivalence check")
    p.add_argument("--allow-fp32", action="store_true", help="pass a graph with no Q/DQ through instead of failing")
    p.add_argument("--atol", type=float, default=EQUIVALENCE_ATOL, help="equivalence bound on max abs difference")
    p.add_argument("--metrics", type=Path, default=contract.OUTPUT_DIR / contract.METRICS, help="metrics JSON to update")
    return p


def print_report(report: dict) -> None:
    print("rewrites applied:")
    for name, count in report["rewrites"].items():
        print(f"  {name}: {count}")
    if "kept_fp32" in report:
        print(f"  kept FP32 (would overflow FP16): {'; '.join(report['kept_fp32']) or 'nothing'}")
    ops = sorted(set(report["ops_before"]) | set(report["ops_after"]))
    print(f"  {'op':<20}{'before':>8}{'after':>8}")
    for op in ops:
        print(f"  {op:<20}{report['ops_before'].get(op, 0):>8}{report['ops_after'].get(op, 0):>8}")


def run_lint(model: onnx.ModelProto, level: str) -> dict:
    """Print the lint (performance rules at `level`) and the performance summary; return both."""
    print(f"TensorRT explicit-quantization lint (performance rules as {level}s):")
    findings = lint(model, performance=level)
    ok = print_lint(findings)
    summary = performance_summary(model)
    print_performance(summary)
    return {"lint_ok": ok, "lint": as_json(findings), "performance": summary}


def verify(original: onnx.ModelProto, modified: onnx.ModelProto, args) -> dict:
    """Lint and equivalence (random inputs, plus the test set with --data-dir); raise if either fails."""
    linted = run_lint(modified, "warning")
    lint_ok = linted["lint_ok"]
    batches = random_batches(shape=input_shape(original))
    if args.data_dir is not None:
        from ..eager.data import load_cifar10
        batches += image_batches(load_cifar10(args.data_dir)["test"])
    eq = equivalence(original, modified, batches, atol=args.atol)
    print(f"equivalence on {eq['samples']} inputs (onnxruntime, no graph optimizations): max abs difference "
          f"{eq['max_abs_diff']:.3g} (bound {eq['atol']:g}), argmax agreement {eq['argmax_agreement']:.4%}")
    result = {**linted, "equivalence": eq}
    if not lint_ok:
        raise PipelineError(f"{output_path(args)} breaks TensorRT's explicit-quantization rules (see FAIL lines above); "
                            f"the surgery does not handle this graph yet")
    if not eq["ok"]:
        raise PipelineError(f"the rewritten graph deviates from the original by {eq['max_abs_diff']:.3g} "
                            f"(> {eq['atol']:g}); it is not the same model")
    return result


def pytorch_int8_accuracy(path: Path) -> Optional[float]:
    """PyTorch INT8 top-1 that resnet_torch.py recorded, or None (said aloud) when there is no record."""
    try:
        return metrics.PyTorchAccuracy.read(path).int8
    except PipelineError as exc:
        print(f"note: {exc}")
        return None


def beside_input(args, given: Optional[Path], name: str) -> Optional[Path]:
    """`given`, else the reference-named artifact `name` next to --input when that exists."""
    if given is not None:
        if not given.is_file():
            raise PipelineError(f"{given} does not exist; pass an existing file or leave the flag out")
        return given
    candidate = args.input.parent / name
    return candidate if args.input.name == contract.INT8_ONNX and candidate.is_file() else None


def pytorch_int8_logits(args, original: onnx.ModelProto, split) -> tuple[np.ndarray, str]:
    """PyTorch INT8 logits on `split` from the TorchScript (--torchscript, or beside the input), else the
    exported graph's in onnxruntime (which exact mode reproduces bit for bit)."""
    path = beside_input(args, args.torchscript, contract.INT8_TORCHSCRIPT)
    if path is None:
        _, logits = ort_accuracy(original, split)
        return logits, "the exported INT8 graph's logits, which exact mode keeps bit for bit"
    import torch

    from ..eager.data import iterate_batches

    model = torch.jit.load(str(path))
    with torch.no_grad():
        return torch.cat([model(x) for x, _ in iterate_batches(split, 500)]).numpy(), f"TorchScript {path.name}"


def check_fast_accuracy(original: onnx.ModelProto, modified: onnx.ModelProto, fast32: onnx.ModelProto,
                        args) -> dict:
    """Top-1 on the test set against PyTorch INT8 minus the high precision's allowance; agreement reported."""
    from ..eager.data import load_cifar10

    test = load_cifar10(args.data_dir)["test"]
    ref_logits, ref_name = pytorch_int8_logits(args, original, test)
    ref = pytorch_int8_accuracy(args.metrics)
    if ref is None:
        ref = float((ref_logits.argmax(1) == test.labels.numpy()).mean())
        print(f"no PyTorch INT8 accuracy in {args.metrics}: holding to that of {ref_name}, {ref:.4f}")
    drop = FAST_ACCURACY_DROP[args.high_precision]
    acc, logits = ort_accuracy(modified, test)
    agreement = float((logits.argmax(1) == ref_logits.argmax(1)).mean())
    result = {"accuracy": acc, "reference_accuracy": ref, "bound": ref - drop, "samples": len(test),
              "argmax_agreement": agreement, "agreement_with": ref_name, "ok": acc >= ref - drop - 1e-9}
    if args.high_precision == "fp16":
        result["accuracy_fp32_high_precision"], _ = ort_accuracy(fast32, test)
        print(f"onnxruntime accuracy on {len(test)} test images: FP32 high precision "
              f"{result['accuracy_fp32_high_precision']:.4f}, FP16 high precision {acc:.4f}")
        print(f"  ({FP16_LOSS_NOTE})")
    print(f"onnxruntime accuracy of the fast graph ({args.high_precision} high precision) on {len(test)} test images: "
          f"{acc:.4f}, bound >= {ref - drop:.4f} (PyTorch INT8 {ref:.4f} minus {100 * drop:.1f} point); "
          f"argmax agreement with PyTorch INT8 ({ref_name}): {agreement:.2%}")
    if not result["ok"]:
        raise PipelineError(f"the fast graph's accuracy {acc:.4f} is below PyTorch INT8 {ref:.4f} minus "
                            f"{100 * drop:.1f} point; use --mode exact for this model")
    return result


def check_fast_error(original: onnx.ModelProto, modified: onnx.ModelProto, args) -> dict:
    """Without data: the fast graph's logit error vs FP32 within a multiple of the exact graph's, or lint only."""
    fp32 = beside_input(args, args.fp32, contract.FP32_ONNX)
    if fp32 is None:
        print("no --data-dir and no FP32 model (--fp32): only the lint ran")
        return {"checked": "lint only"}
    res = error_ratio(load_onnx(fp32), original, modified, random_batches(shape=input_shape(original)))
    print(f"mean abs logit error vs FP32 {fp32.name} on {res['samples']} random inputs: fast {res['fast_error']:.4g}, "
          f"exact {res['exact_error']:.4g}, ratio {res['ratio']:.3f} (bound {res['bound']:g})")
    if not res["ok"]:
        raise PipelineError(f"the fast graph's error against FP32 is {res['ratio']:.2f}x the exact graph's "
                            f"(bound {res['bound']:g}x); use --mode exact for this model")
    return res


def verify_fast(original: onnx.ModelProto, modified: onnx.ModelProto, fast32: onnx.ModelProto, args) -> dict:
    """Lint with the performance rules as errors, then accuracy (with --data-dir) or the random-input error."""
    result = run_lint(modified, "error")
    if not result["lint_ok"]:
        raise PipelineError(f"{output_path(args)} breaks TensorRT's explicit-quantization or placement rules "
                            f"(see FAIL lines above); use --mode exact for this model")
    if args.data_dir is not None:
        result["accuracy"] = check_fast_accuracy(original, modified, fast32, args)
    else:
        result["error_vs_fp32"] = check_fast_error(original, modified, args)
    return result


def output_path(args) -> Path:
    return args.output or contract.OUTPUT_DIR / (contract.INT8_ONNX_FAST if args.mode == "fast" else contract.INT8_ONNX_MODIFIED)


def metrics_section(args) -> str:
    return "onnx_gs" if args.mode == "exact" else f"onnx_gs_fast{'_fp16' if args.high_precision == 'fp16' else ''}"


def validate(args) -> None:
    """Reject bad options before any work starts."""
    require_choice("--mode", args.mode, MODES)
    if args.mode == "exact" and args.high_precision != "fp32":
        raise PipelineError("--high-precision fp16 needs --mode fast: exact mode keeps the export's float32 "
                            "arithmetic bit for bit")
    require_float("--atol", args.atol)
    ensure_writable_dir(output_path(args).parent, "--output")
    ensure_writable_dir(args.metrics.parent, "--metrics")


def main(args) -> dict:
    validate(args)
    with output_lock(output_path(args).parent, args.metrics.parent):
        return run_surgery(args)


def run_surgery(args) -> dict:
    """Rewrite, verify, then write the checked model and its metrics (output folders locked by main)."""
    original = load_onnx(args.input)
    output = output_path(args)
    if args.mode == "exact":
        modified, report = make_tensorrt_ready(original, allow_fp32=args.allow_fp32)
    else:
        fast32, report = make_fast(original, allow_fp32=args.allow_fp32)
        modified = with_high_precision(fast32, report, args.high_precision)
    print_report(report)
    if not args.no_verify:
        report["verification"] = (verify(original, modified, args) if args.mode == "exact"
                                  else verify_fast(original, modified, fast32, args))
    save_onnx(modified, output)
    print(f"wrote {output}")
    metrics.update(args.metrics, metrics_section(args), {**report, "mode": args.mode, "input": str(args.input),
                                                         "output": str(output)})
    return report


def run() -> None:
    run_cli(lambda: main(get_args_parser().parse_args()))
