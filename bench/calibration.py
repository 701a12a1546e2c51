"""Calibration methods side by side: PyTorch INT8 accuracy at 20 and 100 batches, and the cost of calibrating.

    python -m bench.calibration --arch resnet18 --checkpoint saved_models/resnet_cifar10.pt --cost-images 2560 50000

Accuracy: one calibration pass (RangeObserver with PyTorch's HistogramObserver inside, so every method sees the
same images) over 100 un-augmented training batches of 128, snapshotted after 20; each method converted from it
and scored on --test-images of a fixed random test subset; `auto` picks by top-1 on --holdout-images other
training images. Two orders of the training images: `first` (the first N batches, as data.calibration_batches
reads them; the image-folder layout is sorted by class, so that is 2.5 classes at 100 batches and airplanes
alone at 20) and `random` (a fixed random permutation, eager2trt.eager.calibration.split_training).
Cost: each observer calibrating alone on N images in a fresh subprocess: wall time, peak RSS of the process
(resource.getrusage), and the bytes of the observers' state. Writes OUTPUT.json, OUTPUT.md and OUTPUT.png.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from eager2trt.artifacts import atomic_path, write_json
from eager2trt.eager.calibration import METHODS, calibrate, convert_copy, split_training, top1
from eager2trt.eager.data import Split, iterate_batches, load_cifar10
from eager2trt.eager.engines import select_engine
from eager2trt.eager.model import ARCHS, build_model, fuse, load_state_dict
from eager2trt.eager.quantize import prepare_for
from eager2trt.errors import run_cli
from eager2trt.runtime.timing import environment

BATCH = 128
SNAPSHOTS = (20, 100)
COST_OBSERVERS = ("minmax", "histogram", "entropy")  # entropy stands for percentile and mse: one RangeObserver


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=ARCHS, default="resnet18", help="model (default: resnet18)")
    p.add_argument("--checkpoint", type=Path, default=Path("saved_models/resnet_cifar10.pt"),
                   help="FP32 state_dict (default: saved_models/resnet_cifar10.pt)")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/cifar10"), help="CIFAR-10 (default: ../shared/cifar10)")
    p.add_argument("--test-images", type=int, default=2000, help="test images scored (default: 2000)")
    p.add_argument("--holdout-images", type=int, default=1000, help="auto's held-out training images (default: 1000)")
    p.add_argument("--orders", nargs="+", default=["first", "random"], choices=("first", "random"),
                   help="which training images calibrate (default: first random)")
    p.add_argument("--cost-images", type=int, nargs="*", default=[], help="cost runs at these image counts (default: none)")
    p.add_argument("--engine", default="qnnpack", help="quantized CPU engine (default: qnnpack)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--output", type=Path, help="writes OUTPUT.json/.md/.png (default: bench/results/calibration_ARCH)")
    p.add_argument("--cost-one", nargs=2, metavar=("OBSERVER", "IMAGES"), help=argparse.SUPPRESS)
    return p


def load(args):
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    select_engine(args.engine)
    data = load_cifar10(args.data_dir)
    fp32 = load_state_dict(build_model(args.arch), args.checkpoint, args.arch).eval()
    return data, fp32, fuse(fp32, tuple(data["train"].images.shape[1:]))[0]


def calibration_images(train: Split, order: str, n: int, holdout: int) -> tuple[Split, Split]:
    """The calibration images in `order` and held-out training images disjoint from them."""
    if order == "random":
        return split_training(train, n, holdout)
    rest = torch.randperm(len(train) - n, generator=torch.Generator().manual_seed(0))[:holdout] + n
    return Split(train.images[:n], train.labels[:n]), Split(train.images[rest], train.labels[rest])


def accuracy_rows(args, data, fp32, fused) -> list:
    """Per order and snapshot: every method's (and auto's) PyTorch INT8 accuracy."""
    test = data["test"].subset(args.test_images)
    test_batches = [(x, y) for x, y in iterate_batches(test, 250)]
    fp32_acc = top1(fp32, *zip(*test_batches))
    rows = []
    for order in args.orders:
        calib, holdout = calibration_images(data["train"], order, SNAPSHOTS[-1] * BATCH, args.holdout_images)
        hold = list(zip(*iterate_batches(holdout, 250)))
        prepared = prepare_for(fused, calibration="auto", auto_methods=METHODS)
        batches = [x for x, _ in iterate_batches(calib, BATCH)]
        done = 0
        for snap in SNAPSHOTS:
            calibrate(prepared, batches[done:snap], desc=f"{order}: calibrating to {snap} batches")
            done = snap
            row = {"order": order, "batches": snap, "images": snap * BATCH, "fp32": fp32_acc, "methods": {}}
            for method in METHODS:
                int8 = convert_copy(prepared, method)
                row["methods"][method] = {"test": top1(int8, *zip(*test_batches)), "holdout": top1(int8, *hold)}
            for name, candidates in (("auto", METHODS[:-1]), ("auto_with_histogram", METHODS)):
                best = max(candidates, key=lambda m: row["methods"][m]["holdout"])
                row[name] = {"method": best, "test": row["methods"][best]["test"]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def cost_one(args, observer: str, images: int) -> dict:
    """One observer calibrating alone on `images` random training images: time, peak RSS, state bytes."""
    data, _, fused = load(args)
    calib, _ = split_training(data["train"], images)
    del data
    prepared = prepare_for(fused, calibration=observer)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    calibrate(prepared, iterate_batches_only(calib), desc=f"{observer}: {images} images")
    seconds = time.perf_counter() - t0
    state = sum(b.numel() * b.element_size() for m in prepared.modules() if isinstance(m, torch.ao.quantization.ObserverBase)
                for b in m.buffers())
    return {"observer": observer, "images": images, "seconds": seconds, "observer_state_bytes": state,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_calibration_mib": rss_before / 1024}


def iterate_batches_only(split: Split):
    for x, _ in iterate_batches(split, BATCH):
        yield x


def cost_rows(args) -> list:
    """cost_one for every observer and image count, each in a fresh process so peak RSS is its own."""
    rows = []
    for images in args.cost_images:
        for observer in COST_OBSERVERS:
            cmd = [sys.executable, __file__, "--arch", args.arch, "--checkpoint", str(args.checkpoint), "--data-dir",
                   str(args.data_dir), "--threads", str(args.threads), "--engine", args.engine,
                   "--cost-one", observer, str(images)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(args, rows: list, costs: list, env: dict) -> str:
    lines = [f"# Calibration methods on {args.arch} ({args.checkpoint.name})", "",
             f"PyTorch INT8 ({args.engine}) top-1 on {args.test_images} random test images (FP32: "
             f"{rows[0]['fp32']:.4f} on the same images); batches of {BATCH} un-augmented training images. auto: "
             f"chosen by top-1 on {args.holdout_images} other training images among minmax, percentile, entropy, "
             f"mse (auto+h also among histogram).", "",
             "| order | batches | " + " | ".join(METHODS) + " | auto | auto+h |", "|" + "---|" * (len(METHODS) + 4)]
    for r in rows:
        cells = [f"{r['methods'][m]['test']:.4f}" for m in METHODS]
        cells += [f"{r[k]['test']:.4f} ({r[k]['method']})" for k in ("auto", "auto_with_histogram")]
        lines.append(f"| {r['order']} | {r['batches']} | " + " | ".join(cells) + " |")
    if costs:
        lines += ["", "Calibration cost, each observer alone in a fresh process (percentile and mse are the same "
                  "RangeObserver as entropy; they differ only in the range search at convert):", "",
                  "| observer | images | seconds | peak RSS (MiB) | RSS before (MiB) | observer state (KiB) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {c['observer']} | {c['images']} | {c['seconds']:.1f} | {c['peak_rss_mib']:.0f} | "
                  f"{c['rss_before_calibration_mib']:.0f} | {c['observer_state_bytes'] / 1024:.0f} |" for c in costs]
    lines += ["", f"Command: `python -m bench.calibration {' '.join(sys.argv[1:])}`. Machine: {env['cpu']}, "
              f"{args.threads} thread(s), torch {env['torch']}."]
    return "\n".join(lines) + "\n"


def plot(rows: list, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    orders = sorted({r["order"] for r in rows})
    fig, axes = plt.subplots(1, len(orders), figsize=(5.5 * len(orders), 4), squeeze=False)
    for ax, order in zip(axes[0], orders):
        mine = [r for r in rows if r["order"] == order]
        for method in METHODS:
            ax.plot([r["images"] for r in mine], [r["methods"][method]["test"] for r in mine], marker="o", label=method)
        ax.axhline(mine[0]["fp32"], color="grey", ls="--", lw=0.8, label="FP32")
        ax.set_xlabel("calibration images")
        ax.set_ylabel("PyTorch INT8 top-1")
        ax.set_title(f"{title}: {order} training images")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main(args) -> None:
    if args.cost_one:
        print(json.dumps(cost_one(args, args.cost_one[0], int(args.cost_one[1]))))
        return
    output = args.output or Path(f"bench/results/calibration_{args.arch}")
    data, fp32, fused = load(args)
    rows = accuracy_rows(args, data, fp32, fused)
    del data
    costs = cost_rows(args)
    env = environment()
    table = markdown(args, rows, costs, env)
    write_json(output.with_suffix(".json"), {"command": " ".join(sys.argv), "environment": env,
                                             "accuracy": rows, "cost": costs})
    output.with_suffix(".md").write_text(table)
    plot(rows, output.with_suffix(".png"), args.arch)
    print(table)


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
