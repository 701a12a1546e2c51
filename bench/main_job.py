"""The main job two ways in one run, same machine and data: the old script sequence vs the one-process job.

    python -m bench.main_job --data-dir ../shared/cifar10 [--old-commit bb9f9eb] [--calib-batches N]

"old": the seven-process sequence of an earlier commit's scripts/run_pipeline.sh (resnet_torch.py, onnx_gs.py
exact and fast, the FP16 conversion, two resnet_tensorrt.py validations), each stage timed, run from a
`git archive` of that commit, with its defaults (histogram calibration on all 50,000 training images). "new":
this tree's `resnet_torch.py --checkpoint ... --fp16-onnx`, one process, with the same calibration; "new, new
defaults": the same command with today's defaults (auto calibration on 2,560 random training images). All quantize
the shipped checkpoint; the table gives wall time per stage and the figures each run recorded (written to
bench/results/main_job_<machine>.{json,md}).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eager2trt import contract
from eager2trt.artifacts import write_bytes, write_json
from eager2trt.errors import PipelineError, run_cli
from eager2trt.runtime.timing import environment

ROOT = Path(__file__).resolve().parents[1]

CHECKPOINT = ROOT / "saved_models" / contract.FP32_STATE


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True, help="CIFAR-10 root (image folders)")
    p.add_argument("--old-commit", default="bb9f9eb", help="the commit whose script sequence is the baseline")
    p.add_argument("--calib-batches", type=int, help="calibration batches for both runs (none: all 391)")
    p.add_argument("--old-engine", default="qnnpack",
                   help="--engine for the old sequence (its default, onednn, saturates on CPUs without AVX-512 VNNI)")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "main_job_cpu2",
                   help="result files, without suffix")
    return p


def timed(cmd: list, cwd: Path, env: dict, allowed: tuple = (0,)) -> float:
    """Run one stage, return its wall seconds; a failing stage stops the benchmark with its last line (`allowed`:
    exit codes that only report a figure, e.g. the old resnet_tensorrt.py's 1 for a 0.1-point mismatch)."""
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode not in allowed:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PipelineError(f"stage {' '.join(map(str, cmd[1:3]))} failed ({tail[0][:200]})")
    return seconds


def old_sequence(args, work: Path) -> tuple[dict, dict]:
    """The earlier commit's seven-process main job, stage by stage."""
    src = work / "old"
    src.mkdir()
    archive = subprocess.run(["git", "archive", args.old_commit], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    out = work / "old_out"
    env = {**os.environ, "PYTHONPATH": str(src)}
    py, data, m = sys.executable, args.data_dir, out / contract.METRICS
    calib = ["--calib-batches", str(args.calib_batches)] if args.calib_batches else []
    stages = {
        "resnet_torch.py": [py, "resnet_torch.py", "--data-dir", data, "--output-dir", out, "--checkpoint", CHECKPOINT,
                            "--engine", args.old_engine, *calib],
        "onnx_gs.py (exact)": [py, "onnx_gs.py", "--input", out / contract.INT8_ONNX, "--output",
                               out / contract.INT8_ONNX_MODIFIED, "--data-dir", data, "--metrics", m],
        "onnx_gs.py (fast)": [py, "onnx_gs.py", "--mode", "fast", "--input", out / contract.INT8_ONNX, "--output",
                              out / contract.INT8_ONNX_FAST, "--data-dir", data, "--metrics", m],
        "FP16 ONNX": [py, "-m", "eager2trt.fp16", "--input", out / contract.FP32_ONNX, "--output",
                      out / contract.FP16_ONNX, "--data-dir", data],
        "resnet_tensorrt.py (exact)": [py, "resnet_tensorrt.py", "--onnx", out / contract.INT8_ONNX_MODIFIED,
                                       "--data-dir", data, "--metrics", m],
        "resnet_tensorrt.py (fast)": [py, "resnet_tensorrt.py", "--onnx", out / contract.INT8_ONNX_FAST,
                                      "--data-dir", data, "--metrics", m],
    }
    seconds = {}
    for name, cmd in stages.items():
        print(f"old: {name} ...", flush=True)
        seconds[name] = timed(cmd, src, env, allowed=(0, 1) if name.startswith("resnet_tensorrt") else (0,))
    rec = json.loads(m.read_text())
    figures = {"fp32": rec["pytorch"]["fp32_accuracy"], "int8": rec["pytorch"]["int8_accuracy"],
               "exact graph": rec["validation"][contract.INT8_ONNX_MODIFIED]["accuracy"],
               "fast graph": rec["validation"][contract.INT8_ONNX_FAST]["accuracy"],
               "exact max abs diff": rec["onnx_gs"]["verification"]["equivalence"]["max_abs_diff"],
               "exact inputs": rec["onnx_gs"]["verification"]["equivalence"]["samples"]}
    return seconds, figures


def new_job(args, work: Path, same_calibration: bool) -> tuple[dict, dict]:
    """This tree's main job: one process (with the old calibration, or with today's defaults)."""
    out = work / f"new_out_{same_calibration}"
    calib = (["--calibration", "histogram", "--calib-batches", str(args.calib_batches or 0)] if same_calibration
             else [])
    print(f"new: resnet_torch.py --fp16-onnx {' '.join(calib)} ...", flush=True)
    seconds = {"resnet_torch.py --fp16-onnx (one process)": timed(
        [sys.executable, "resnet_torch.py", "--data-dir", args.data_dir, "--output-dir", out, "--checkpoint", CHECKPOINT,
         "--fp16-onnx", *calib], ROOT, dict(os.environ))}
    rec = json.loads((out / contract.METRICS).read_text())
    eq = rec["onnx_gs"]["checks"]["equivalence"]["figures"]
    figures = {"fp32": rec["pytorch"]["fp32_accuracy"], "int8": rec["pytorch"]["int8_accuracy"],
               "exact graph": rec["onnx_gs"]["accuracy"], "fast graph": rec["onnx_gs_fast"]["accuracy"],
               "exact max abs diff": eq["max_abs_diff"], "exact inputs": eq["samples"]}
    return seconds, figures


def table(result: dict) -> str:
    lines = [f"Main job, old script sequence ({result['old_commit']}) vs one process, same machine, one run each",
             "", "| run | stage | wall s |", "|---|---|---|"]
    for run in ("old", "new", "new, new defaults"):
        for stage, s in result[run]["seconds"].items():
            lines.append(f"| {run} | {stage} | {s:.1f} |")
        lines.append(f"| {run} | **total** | **{sum(result[run]['seconds'].values()):.1f}** |")
    lines += ["", "| figure | old | new | new, new defaults |", "|---|---|---|---|"]
    for k in result["old"]["figures"]:
        lines.append(f"| {k} | " + " | ".join(f"{result[r]['figures'][k]:.6g}" for r in ("old", "new", "new, new defaults"))
                     + " |")
    total = {r: sum(result[r]["seconds"].values()) for r in ("old", "new", "new, new defaults")}
    lines += ["", f"wall time over the old sequence's: new {total['new'] / total['old']:.2f}, new defaults "
                  f"{total['new, new defaults'] / total['old']:.2f}"]
    return "\n".join(lines)


def main(args) -> dict:
    if not CHECKPOINT.is_file():
        raise PipelineError(f"{CHECKPOINT} does not exist; the benchmark quantizes the shipped checkpoint")
    with tempfile.TemporaryDirectory(prefix="main_job_bench.") as tmp:
        work = Path(tmp)
        old_s, old_f = old_sequence(args, work)
        new_s, new_f = new_job(args, work, same_calibration=True)
        now_s, now_f = new_job(args, work, same_calibration=False)
    result = {"old_commit": args.old_commit, "calib_batches": args.calib_batches, "environment": environment(),
              "load_1min_after": os.getloadavg()[0], "old": {"seconds": old_s, "figures": old_f},
              "new": {"seconds": new_s, "figures": new_f}, "new, new defaults": {"seconds": now_s, "figures": now_f}}
    text = table(result)
    write_json(args.output.with_suffix(".json"), result)
    write_bytes(args.output.with_suffix(".md"), (text + "\n").encode())
    print(text)
    return result


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
