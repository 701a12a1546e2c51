"""QAT and evaluation throughput at N data-parallel processes, side by side, in one run.

For each N of --procs, N processes (one per GPU with nccl, or CPU processes with gloo) run the project's own code
paths: the fake-quantized model (eager/qat.py: prepare, calibrate through distributed.calibrate), QAT steps through
train.make_step around DistributedDataParallel (distributed.wrap), each rank on its own random batch of
--batch-size images, and evaluation through distributed.correct_and_total (each rank its share, exact counts
all-reduced). Random data: throughput only, no accuracy. Rank 0 times each step after a warm-up, with
the device synchronized; the table gives global images/s (N x batch / median step), p99 step time, and speed-up
and efficiency against N = 1. Writes distributed.json in --output-dir; prints the table last.
"""

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from eager2trt.artifacts import write_json
from eager2trt.eager import distributed
from eager2trt.eager.model import ARCHS, build_model
from eager2trt.eager.qat import calibrate, prepare, qat_recipe
from eager2trt.eager.train import make_step
from eager2trt.eager.train import prepare as prepare_optimizer
from eager2trt.errors import PipelineError, require_choice, require_int, require_ints, run_cli
from eager2trt.runtime.timing import environment


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default="resnet50", help=f"one of {', '.join(ARCHS)}")
    p.add_argument("--size", type=int, default=224, help="input height and width in pixels")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4, 8],
                   help="process counts to measure (with CUDA at most the number of GPUs)")
    p.add_argument("--batch-size", type=int, default=64, help="images per process per step")
    p.add_argument("--steps", type=int, default=20, help="timed QAT steps (and evaluation batches) per process")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--calib-batches", type=int, default=2, help="calibration batches (shared among the processes)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cuda or cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    p.add_argument("--output-dir", type=Path, default=Path("bench/results"), help="where distributed.json goes")
    return p


def validate(args) -> None:
    """Reject bad options before any process starts."""
    require_choice("--arch", args.arch, ARCHS)
    require_choice("--device", args.device, ("auto", "cuda", "cpu"))
    for flag in ("size", "batch_size", "steps", "calib_batches", "threads"):
        require_int(f"--{flag.replace('_', '-')}", getattr(args, flag))
    require_int("--warmup", args.warmup, minimum=0)
    require_ints("--procs", args.procs)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise PipelineError("--device cuda but CUDA is not available here; pass --device cpu (gloo) or auto")
    gpus = torch.cuda.device_count() if args.device != "cpu" else 0
    if gpus and max(args.procs) > gpus:
        raise PipelineError(f"--procs {max(args.procs)} needs {max(args.procs)} GPUs, this machine has {gpus}; pass "
                            f"--procs up to {gpus}, or --device cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, runs: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds per call of `fn` after `warmup` calls, the device synchronized around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _model(args, device: torch.device) -> torch.nn.Module:
    """The fake-quantized model, calibrated data-parallel on random batches, ready for QAT on `device`."""
    torch.manual_seed(0)
    # minmax: step time does not depend on the method (activation observers are off during QAT steps, the weights'
    # are per-channel min/max whatever it is), and it is the fastest to calibrate
    model = prepare(build_model(args.arch).eval(), calibration="minmax")
    gen = torch.Generator().manual_seed(1)
    calibrate(model, [torch.randn(args.batch_size, 3, args.size, args.size, generator=gen)
                      for _ in range(args.calib_batches)])
    return model.to(device)


def worker(rank: int, size: int, port: int, args, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    if size > 1:
        distributed.init_from_env("nccl" if args.device == "cuda" else "gloo")
    device = torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model = _model(args, device)
    recipe = qat_recipe(1, batch_size=args.batch_size)
    opt, _ = prepare_optimizer(model, recipe, device)
    step = make_step(distributed.wrap(model), opt, recipe, device)
    gen = torch.Generator(device=device).manual_seed(rank)
    x = torch.randint(0, 256, (args.batch_size, 3, args.size, args.size), dtype=torch.uint8, device=device,
                      generator=gen)
    y = torch.randint(0, 10, (args.batch_size,), device=device, generator=gen)
    model.train()
    qat = _timed(lambda: step(x, y), args.steps, args.warmup, device)
    model.eval()
    batches = [(x.float() / 255, y)] * (args.steps * size)  # every rank's share: `steps` batches
    evaluation = _timed(lambda: distributed.correct_and_total(model, batches), 1, 1, device)
    if rank == 0:
        write_json(Path(out) / f"{size}.json", {"qat_step_s": qat, "eval_s": evaluation[0],
                                                "eval_images": args.steps * size * args.batch_size})
    if size > 1:
        torch.distributed.destroy_process_group()


def measure(args, size: int) -> dict:
    """One row: `size` processes, QAT and evaluation throughput."""
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(size, _free_port(), args, out), nprocs=size, join=True)
        raw = json.loads((Path(out) / f"{size}.json").read_text())
    step = sorted(raw["qat_step_s"])
    median = statistics.median(step)
    return {"procs": size, "qat_images_per_s": size * args.batch_size / median, "qat_step_ms_median": median * 1e3,
            "qat_step_ms_p99": step[min(len(step) - 1, int(0.99 * len(step)))] * 1e3,
            "eval_images_per_s": raw["eval_images"] / raw["eval_s"]}


def table(rows: list[dict]) -> str:
    """Markdown table, speed-up and efficiency against the first row (the smallest N)."""
    base = rows[0]
    lines = ["| processes | QAT images/s | QAT step ms (median / p99) | QAT speed-up | QAT efficiency | "
             "eval images/s | eval speed-up |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        qat_up = r["qat_images_per_s"] / base["qat_images_per_s"]
        eval_up = r["eval_images_per_s"] / base["eval_images_per_s"]
        lines.append(f"| {r['procs']} | {r['qat_images_per_s']:.1f} | {r['qat_step_ms_median']:.1f} / "
                     f"{r['qat_step_ms_p99']:.1f} | {qat_up:.2f}x | {qat_up / (r['procs'] / base['procs']):.0%} | "
                     f"{r['eval_images_per_s']:.1f} | {eval_up:.2f}x |")
    return "\n".join(lines)


def main(args) -> dict:
    validate(args)
    args.device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    rows = [measure(args, n) for n in sorted(set(args.procs))]
    record = {"rows": rows, "arch": args.arch, "size": args.size, "batch_size_per_process": args.batch_size,
              "steps": args.steps, "warmup": args.warmup, "device": args.device,
              "backend": "nccl" if args.device == "cuda" else "gloo", "threads_per_process": args.threads,
              "gpus": torch.cuda.device_count(), "environment": environment(),
              "command": "python -m bench.distributed " + " ".join(
                  f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                  for k, v in vars(args).items())}
    write_json(args.output_dir / "distributed.json", record)
    machine = record["environment"].get("gpu") or record["environment"].get("cpu")
    print(f"{args.arch} at {args.size} px, {args.batch_size} images per process, {args.device} ({record['backend']}), "
          f"{args.threads} thread(s) per process; {machine}")
    print(table(rows))
    return record


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
