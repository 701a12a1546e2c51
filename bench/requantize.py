"""Models quantized with torch.ao's default qconfigs, brought to TensorRT's symmetric scheme: the error it adds.

    python -m bench.requantize --checkpoint saved_models/resnet_cifar10.pt --data-dir ../shared/cifar10

For each of --qconfigs, the shipped ResNet18 is converted as a user would (fuse_model, get_default_qconfig(name),
prepare, calibrate on --calib-images random training images, convert, on the engine of that name), then handed to
quantize_to_tensorrt(fp32, calibration, int8=user, images=test, labels=test labels) on a fixed random subset of
--test-images test images. Reported: the user's own INT8 top-1 (on its engine), the re-derived INT8 and its exact
graph's, FP32's, and the requantization check's figures. The tool's own PTQ (default QuantizeConfig, percentile)
on the same calibration images is the last row. Writes OUTPUT.json and OUTPUT.md.
"""

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch
from torch.ao import quantization as tq

from eager2trt.artifacts import atomic_path, write_json
from eager2trt.checks.result import CheckFailed
from eager2trt.eager.calibration import split_training
from eager2trt.eager.data import Split, iterate_batches, load_cifar10
from eager2trt.eager.model import build_model, load_state_dict
from eager2trt.errors import run_cli
from eager2trt.pipeline import quantize_to_tensorrt
from eager2trt.runtime.backends import PyTorchRunner, accuracy_of, logits
from eager2trt.runtime.timing import environment

BATCH = 128


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("saved_models/resnet_cifar10.pt"),
                   help="ResNet18 FP32 state_dict (default: saved_models/resnet_cifar10.pt)")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/cifar10"), help="CIFAR-10 (default: ../shared/cifar10)")
    p.add_argument("--qconfigs", nargs="+", default=["x86", "fbgemm", "qnnpack"],
                   help="torch.ao default qconfigs, each converted on the engine of its name (default: x86 fbgemm qnnpack)")
    p.add_argument("--calib-images", type=int, default=512, help="random training images calibrating (default: 512)")
    p.add_argument("--test-images", type=int, default=2000, help="random test images measured (default: 2000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--output", type=Path, default=Path("bench/results/requantize_cpu2"),
                   help="writes OUTPUT.json/.md (default: bench/results/requantize_cpu2)")
    return p


def user_int8(fp32: torch.nn.Module, name: str, calib: list) -> torch.nn.Module:
    """fp32 converted the way torch.ao's eager-mode tutorial does, with get_default_qconfig(name) on engine `name`."""
    torch.backends.quantized.engine = name
    model = copy.deepcopy(fp32).eval()
    model.fuse_model()
    model.qconfig = tq.get_default_qconfig(name)
    tq.prepare(model, inplace=True)
    with torch.no_grad():
        for x in calib:
            model(x)
    return tq.convert(model)


def row(name: str, fp32, calib: list, test: list, labels, user) -> dict:
    """One qconfig's figures; a failed check of the full run is recorded and the run repeated without the fast
    graph, so the requantization figures are still measured."""
    user_acc = accuracy_of(logits(PyTorchRunner(user), test, desc=False), labels) if user is not None else None
    engine, failed = torch.backends.quantized.engine, None
    for fast in ("fp32", None):
        torch.backends.quantized.engine = engine  # the user's model is packed for the engine it was converted on
        try:
            with tempfile.TemporaryDirectory() as out:
                result = quantize_to_tensorrt(fp32, calib, out, int8=user, images=test, labels=labels, fast=fast)
            break
        except CheckFailed as exc:
            failed = {"check": exc.check.name, "sentence": str(exc)}
            if fast is None:
                raise
    check = result.check("requantization") if user is not None else None
    return {"qconfig": name, "engine": result.engine, "user_int8": user_acc, "fp32": result.accuracy["fp32"],
            "int8": result.accuracy["int8"], "exact": result.accuracy.get("exact"), "fast": result.accuracy.get("fast"),
            "failed": failed, "requantization": check.as_dict() if check else None}


def markdown(rows: list, env: dict, args) -> str:
    lines = ["# Default qconfigs re-derived in the symmetric scheme (ResNet18, CIFAR-10)", "",
             f"`python -m bench.requantize --calib-images {args.calib_images} --test-images {args.test_images}`; "
             f"{env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}, onnxruntime {env.get('onnxruntime')}, "
             f"{args.threads} thread(s).", "",
             "| qconfig | user INT8 (its engine) | re-derived INT8 (engine) | exact graph | fast graph | FP32 | "
             "ratio (bound) | rel. distance to FP32: re-derived / user | argmax re-derived vs user |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["requantization"]
        user = "-" if r["user_int8"] is None else f"{r['user_int8']:.4f}"
        if c and c["value"] is not None:
            f = c["figures"]
            measured = (f"{c['value']:.3f} ({c['bound']}) | {f['distance_rederived_fp32']:.4f} / "
                        f"{f['distance_given_fp32']:.4f} | {f['argmax_rederived_given']:.2%} |")
        else:
            measured = "- | - | - |"
        fast = (f"failed {r['failed']['check']}" if r["failed"] else f"{r['fast']:.4f}")
        lines.append(f"| {r['qconfig']} | {user} | {r['int8']:.4f} ({r['engine']}) | {r['exact']:.4f} | {fast} | "
                     f"{r['fp32']:.4f} | {measured}")
    lines += ["", "A failed check, in full:"] + [f"- {r['qconfig']}: {r['failed']['sentence']}" for r in rows if r["failed"]]
    return "\n".join(lines) + "\n"


def main(args) -> None:
    torch.set_num_threads(args.threads)
    data = load_cifar10(args.data_dir)
    fp32 = load_state_dict(build_model("resnet18"), args.checkpoint, "resnet18").eval()
    calib_split, _ = split_training(data["train"], args.calib_images)
    order = torch.randperm(len(data["test"]), generator=torch.Generator().manual_seed(0))[:args.test_images]
    test_split = Split(data["test"].images[order], data["test"].labels[order])
    calib = [x for x, _ in iterate_batches(calib_split, BATCH)]
    test = [x for x, _ in iterate_batches(test_split, BATCH)]
    rows = [row(name, fp32, calib, test, test_split.labels, user_int8(fp32, name, calib)) for name in args.qconfigs]
    rows.append(row("eager2trt PTQ (percentile)", fp32, calib, test, test_split.labels, None))
    env = environment()
    write_json(args.output.with_suffix(".json"), {"command": " ".join(sys.argv), "rows": rows, "environment": env})
    text = markdown(rows, env, args)
    with atomic_path(args.output.with_suffix(".md")) as tmp:
        Path(tmp).write_text(text)
    print(text)


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
