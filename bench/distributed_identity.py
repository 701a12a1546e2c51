"""Does a data-parallel calibration convert the one-process INT8 model? Per method, on a real model and real images.

Calibrates the shipped (or given) FP32 checkpoint once in one process and once in N gloo processes on CPU (each
rank its rank-strided share of the same batches, observers merged by eager/distributed.py), converts both, and
counts the layers whose scale, zero point or int weights differ, with the largest relative scale difference.
Prints the table last and writes distributed_identity.json in --output-dir.
"""

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from eager2trt import contract
from eager2trt.artifacts import write_json
from eager2trt.eager import calibration as cal
from eager2trt.eager import distributed
from eager2trt.eager.data import calibration_batches, load_cifar10
from eager2trt.eager.model import ARCHS, build_model, fuse, load_state_dict
from eager2trt.eager.quantize import CALIBRATIONS, prepare_for
from eager2trt.eager.quiet import quantized_api
from eager2trt.errors import require_choice, require_int, run_cli
from eager2trt.runtime.timing import environment

METHODS = ("minmax", "percentile", "entropy", "mse", "histogram")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default="resnet18", help=f"one of {', '.join(ARCHS)}")
    p.add_argument("--checkpoint", type=Path, default=contract.OUTPUT_DIR / contract.FP32_STATE,
                   help="FP32 state_dict")
    p.add_argument("--data-dir", type=Path, default=contract.DATA_DIR, help="CIFAR-10 root")
    p.add_argument("--calib-batches", type=int, default=20, help="batches of 128 random training images")
    p.add_argument("--procs", type=int, default=2, help="processes of the data-parallel run")
    p.add_argument("--methods", nargs="+", default=list(METHODS), help="calibration methods to compare")
    p.add_argument("--output-dir", type=Path, default=Path("bench/results"), help="where the JSON goes")
    return p


def int8_models(args, batches: list) -> dict:
    """{method: (qparams of the converted model, seconds of calibration)} in this process (or this rank)."""
    torch.backends.quantized.engine = "qnnpack"
    fp32 = load_state_dict(build_model(args.arch), args.checkpoint, args.arch)
    fused, _ = fuse(fp32, tuple(batches[0].shape[1:]))
    out = {}
    for method in args.methods:
        prepared = prepare_for(fused, calibration=method)
        t0 = time.perf_counter()
        distributed.calibrate(prepared, batches)
        seconds = time.perf_counter() - t0
        with quantized_api():
            out[method] = (qparams(cal.convert_copy(prepared)), seconds)
    return out


def qparams(int8: torch.nn.Module) -> dict:
    out = {}
    for key, value in int8.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_quantized:
            out[f"{key}.int"] = value.int_repr()
        elif isinstance(value, torch.Tensor):
            out[key] = value
    return out


def worker(rank: int, size: int, port: int, args, batches: list, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init_from_env("gloo")
    models = int8_models(args, batches)
    if rank == 0:
        torch.save(models, Path(out) / "ranks.pt")
    torch.distributed.destroy_process_group()


def compare(one: dict, many: dict) -> dict:
    """Layers differing, out of how many, and the largest relative scale difference."""
    scales = [k for k in one if k.endswith("scale")]
    differing = sorted({k.rsplit(".", 1)[0] for k in one if not torch.equal(one[k], many[k])})
    worst = max(float((many[k] / one[k] - 1).abs().max()) for k in scales)
    return {"tensors": len(one), "scales": len(scales), "differing": differing, "max_rel_scale_diff": worst}


def main(args) -> dict:
    require_int("--calib-batches", args.calib_batches)
    require_int("--procs", args.procs, minimum=2)
    for m in args.methods:
        require_choice("--methods", m, [c for c in CALIBRATIONS if c != "auto"])
    torch.set_num_threads(1)
    data = load_cifar10(args.data_dir)
    batches = list(calibration_batches(data["train"], 128, args.calib_batches))
    one = int8_models(args, batches)
    with tempfile.TemporaryDirectory() as out:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(worker, args=(args.procs, port, args, batches, out), nprocs=args.procs, join=True)
        many = torch.load(Path(out) / "ranks.pt", weights_only=False)
    rows = {m: {**compare(one[m][0], many[m][0]), "seconds_one": one[m][1], "seconds_parallel": many[m][1]}
            for m in args.methods}
    record = {"rows": rows, "arch": args.arch, "checkpoint": str(args.checkpoint), "procs": args.procs,
              "calib_images": sum(len(b) for b in batches), "environment": environment()}
    write_json(args.output_dir / "distributed_identity.json", record)
    print(f"{args.arch}, {record['calib_images']} calibration images, 1 vs {args.procs} gloo processes (1 thread each)")
    print("| method | layers differing | max relative scale difference | calibration s, 1 process | "
          f"calibration s, {args.procs} processes |\n|---|---|---|---|---|")
    for m, r in rows.items():
        print(f"| {m} | {len(r['differing'])} of {r['scales']} | {r['max_rel_scale_diff']:.2e} | "
              f"{r['seconds_one']:.1f} | {r['seconds_parallel']:.1f} |")
    return record


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
