"""Verification at scale: peak memory and throughput of quantize_to_tensorrt's checks as the held-out data grows,
streamed (data=, a DataLoader read on each pass, checks on running statistics) beside held in memory (images= and
labels= lists, as a caller with everything loaded passes them).

    python -m bench.streaming --arch resnet18 --classes 1000 --image-size 64 --sizes 500 5000

Each run is a fresh process (peak RSS is per process): a torchvision quantizable model with random weights,
calibrated on 4 batches of 32, then verified on N synthetic images (each drawn from a seed of its index, so no data
set is held by the loader), random labels. Reported per run: peak RSS (MiB), seconds, and images per second
through the whole verification (every model on every image). Writes OUTPUT_DIR/NAME.{json,md}.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.generality import write_results
from eager2trt.errors import run_cli

COLUMNS = ("way", "images", "peak_rss_mib", "seconds", "images_per_second", "checks_passed")


class Synthetic(torch.utils.data.Dataset):
    """`n` normalized-looking images of `shape`, each made from its own seed: nothing is held but `n`."""

    def __init__(self, n: int, shape: tuple, classes: int):
        self.n, self.shape, self.classes = n, shape, classes

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.randn(*self.shape, generator=g), int(torch.randint(self.classes, (1,), generator=g))


def model_and_calibration(arch: str, classes: int, size: int) -> tuple:
    """A torchvision quantizable model with seeded random weights, its input CHW, and 4 seeded calibration batches
    of 32."""
    from eager2trt.eager.model import build_model

    torch.manual_seed(0)
    shape = (3, size, size)
    calib = [torch.randn(32, *shape, generator=torch.Generator().manual_seed(100 + i)) for i in range(4)]
    return build_model(arch, classes), shape, calib


def child(arch: str, classes: int, size: int, n: int, way: str) -> dict:
    """One run in this process: the pipeline's verification on `n` images, streamed or held."""
    from eager2trt.pipeline import quantize_to_tensorrt

    model, shape, calib = model_and_calibration(arch, classes, size)
    loader = torch.utils.data.DataLoader(Synthetic(n, shape, classes), batch_size=100)
    held = {"data": loader} if way == "streamed" else dict(zip(("images", "labels"), _held(loader)))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = quantize_to_tensorrt(model, calib, out, accuracy_budget=100, **held)
    seconds = time.perf_counter() - t0
    return {"way": way, "images": n, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds": seconds, "images_per_second": n / seconds,
            "checks_passed": f"{sum(c.passed for c in result.checks)}/{len(result.checks)}"}


def _held(loader) -> tuple:
    pairs = list(loader)
    return [x for x, _ in pairs], torch.cat([y for _, y in pairs])


def scale_parser(doc: str, arch: str, image_size: int, name: str) -> argparse.ArgumentParser:
    """The arguments every verification-at-scale bench takes (this one's and bench.gpu_verify's): the model, its
    classes and image size, where the results go, and --child (one run, in the fresh process run_child starts)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=arch, help=f"torchvision quantizable model (default: {arch})")
    p.add_argument("--classes", type=int, default=1000, help="classifier width (default: 1000, ImageNet's)")
    p.add_argument("--image-size", type=int, default=image_size, help=f"square image size (default: {image_size})")
    p.add_argument("--output-dir", type=Path, default=Path("bench/results"))
    p.add_argument("--name", default=name, help=f"file stem of the .json and .md (default: {name})")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p


def run_child(module: str, argv: list, what: str) -> dict:
    """One run in a fresh process, as peak RSS is per process: `python -m MODULE --child ARGV`, its progress and
    errors shown on stderr; returns the dict its last line of output prints."""
    done = subprocess.run([sys.executable, "-m", module, "--child", *map(str, argv)], stdout=subprocess.PIPE,
                          text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{what} failed (exit {done.returncode}; negative: killed by that signal, e.g. -9 out of "
                         f"memory); its error is printed above")
    return json.loads(done.stdout.strip().splitlines()[-1])


def get_args_parser() -> argparse.ArgumentParser:
    p = scale_parser(__doc__, "resnet18", 64, "streaming_cpu2")
    p.add_argument("--sizes", type=int, nargs="+", default=[500, 5000], help="held-out images per run")
    p.add_argument("--ways", nargs="+", default=["streamed", "held"], choices=["streamed", "held"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per run (default: 2)")
    return p


def main(args) -> int:
    if args.child:
        torch.set_num_threads(args.threads)
        print(json.dumps(child(args.arch, args.classes, args.image_size, args.sizes[0], args.ways[0])))
        return 0
    rows = []
    for way in args.ways:
        for n in args.sizes:
            rows.append(run_child("bench.streaming", ["--arch", args.arch, "--classes", args.classes, "--image-size",
                                                      args.image_size, "--sizes", n, "--ways", way, "--threads",
                                                      args.threads], f"the {way} run on {n} images"))
            print(rows[-1], flush=True)
    command = " ".join(["python -m bench.streaming", "--arch", args.arch, "--classes", str(args.classes),
                        "--image-size", str(args.image_size), "--sizes", *map(str, args.sizes)])
    text = write_results(args.output_dir, args.name, command, rows, COLUMNS,
                         "(every model: FP32, INT8, export, exact, fast, on every image)")
    print(text)
    return 0


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main(get_args_parser().parse_args())))
