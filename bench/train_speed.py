"""Training speed: the reference's DataLoader loop vs our device-resident loop, same GPU, one run.

Prints ms/step and projected minutes for the 200-epoch recipe, and writes saved_models/train_speed.json.
"""

import argparse
import time
from pathlib import Path

import torch

from eager2trt import contract
from eager2trt.artifacts import write_json
from eager2trt.eager.data import MEAN, STD, epoch_batches, load_cifar10
from eager2trt.errors import PipelineError, require_choice, require_int, run_cli
from eager2trt.eager.model import build_model
from eager2trt.runtime.timing import environment
from eager2trt.eager.train import Recipe, make_step, prepare


VARIANTS = {"reference": Recipe(fast=False),
            "eager": Recipe(compile_mode=None),
            "compile": Recipe(compile_mode="max-autotune-no-cudagraphs"),
            "reduce-overhead": Recipe(compile_mode="reduce-overhead")}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=contract.DATA_DIR, help="CIFAR-10 root")
    p.add_argument("--output-dir", type=Path, default=contract.OUTPUT_DIR, help="where train_speed.json goes")
    p.add_argument("--steps", type=int, default=200, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps per variant (compilation happens here)")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers for the reference loop")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"loops to time: {', '.join(VARIANTS)}")
    return p


class _PilDataset(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 does per item: uint8 array -> PIL -> transforms."""

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor):
        from torchvision import transforms as T

        self.images = images_u8.permute(0, 2, 3, 1).numpy()
        self.labels = labels.tolist()
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                                    T.Normalize(MEAN, STD)])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def reference_batches(split, batch_size: int, workers: int):
    loader = torch.utils.data.DataLoader(_PilDataset(split.images, split.labels), batch_size=batch_size,
                                         shuffle=True, num_workers=workers, pin_memory=True,
                                         persistent_workers=workers > 0)
    while True:
        for x, y in loader:
            yield x.cuda(non_blocking=True), y.cuda(non_blocking=True)


def fast_batches(split, batch_size: int):
    gen = torch.Generator(device="cuda").manual_seed(0)
    split = split.to("cuda")
    while True:
        yield from epoch_batches(split, batch_size, gen)


def time_variant(name: str, split, args) -> dict:
    recipe = VARIANTS[name]
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model("resnet18").train()
    opt, _ = prepare(model, recipe, device)
    step = make_step(model, opt, recipe, device)
    batches = reference_batches(split, recipe.batch_size, args.workers) if name == "reference" \
        else fast_batches(split, recipe.batch_size)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step(*next(batches))
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    for _ in range(args.steps):
        step(*next(batches))
    end.record()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) * 1000 / args.steps
    steps_200 = 200 * -(-len(split) // recipe.batch_size)
    return {"variant": name, "ms_per_step": ms, "gpu_ms_per_step": start.elapsed_time(end) / args.steps,
            "warmup_seconds": warm_s, "projected_minutes_200_epochs": ms * steps_200 / 60000}


def validate(args) -> None:
    """Reject bad options before any timing starts."""
    require_int("--steps", args.steps)
    require_int("--warmup", args.warmup, minimum=0)
    require_int("--workers", args.workers, minimum=0)
    for v in args.variants:
        require_choice("--variants", v, VARIANTS)


def main(args) -> None:
    validate(args)
    if not torch.cuda.is_available():
        raise PipelineError("bench/train_speed.py times GPU training and no CUDA device is visible; run it on a GPU")
    train = load_cifar10(args.data_dir)["train"]
    rows = [time_variant(v, train, args) for v in args.variants]
    ref = next((r["ms_per_step"] for r in rows if r["variant"] == "reference"), None)
    write_json(args.output_dir / "train_speed.json", {"rows": rows, "environment": environment(),
                                                      "steps": args.steps, "warmup": args.warmup})
    print(f"\nTraining speed, ResNet18 batch 128, {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("| variant | ms/step (wall) | ms/step (CUDA events) | warm-up s | 200 epochs, min | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        speedup = f"{ref / r['ms_per_step']:.2f}x" if ref else "-"
        print(f"| {r['variant']} | {r['ms_per_step']:.2f} | {r['gpu_ms_per_step']:.2f} | {r['warmup_seconds']:.1f} "
              f"| {r['projected_minutes_200_epochs']:.1f} | {speedup} |")


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
