"""The user-model zoo (tests/zoo.py: UNet, FPN, ASPP, squeeze-excite, 1-D CNN, PixelShuffle, one model per
activation, standalone BatchNorm, .squeeze(), forward(x, targets=None), a two-output detector, a two-input model)
through quantize_to_tensorrt, as one table.

Each model runs as a user would call it (seeded random weights and calibration, no
labels, QuantizeConfig(calibration="percentile", engine="auto"), fast="fp32"); the pipeline's own checks decide and
bench/generality.py's row_of reads the result into a row, plus the float islands (eager/layers.py) the run made.
A PipelineError is a row "FAILED: <sentence>" and the command exits 2. Writes OUTPUT_DIR/NAME.{json,md}; prints
the table last.

    python -m bench.zoo [--models unet_convtranspose fpn_nearest_add ...]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.generality import CONFIG, failed, row_of, write_results
from eager2trt.errors import PipelineError, require_choice, run_cli
from eager2trt.pipeline import quantize_to_tensorrt
from tests import zoo

COLUMNS = ("model", "input", "exact", "fast", "float_islands", "fusable_adds", "predicted_unfused", "engine",
           "seconds")


def run_model(name: str, work: Path) -> dict:
    """One zoo model through quantize_to_tensorrt into `work`, as a table row."""
    t0 = time.time()
    shape = zoo.input_words(name)
    try:
        result = quantize_to_tensorrt(zoo.build(name), zoo.calibration(name), work, CONFIG, fast="fp32")
        row = row_of(name, shape, result)
        row["float_islands"] = ", ".join(result.int8.float_islands) or "-"
    except PipelineError as exc:
        row = {"model": name, "exact": f"FAILED: {exc}", "fast": "FAILED"}
    row.update(input=shape, seconds=round(time.time() - t0, 1))
    return row


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=[*zoo.ZOO, *zoo.MULTI_IO], help="zoo models (default: all)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--output-dir", type=Path, default=Path("bench/results"), help="where the table and JSON go")
    p.add_argument("--name", default="zoo_cpu2", help="file stem of the .json and .md written (default: zoo_cpu2)")
    return p


def main(args) -> int:
    for name in args.models:
        require_choice("--models", name, {**zoo.ZOO, **zoo.MULTI_IO})
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_model(name, Path(tmp) / name) for name in args.models]
    command = f"python -m bench.zoo --models {' '.join(args.models)} --threads {args.threads}"
    text = write_results(args.output_dir, args.name, command, rows, COLUMNS,
                         f"through `quantize_to_tensorrt` (QuantizeConfig(calibration=\"{CONFIG.calibration}\", "
                         f"engine=\"{CONFIG.engine}\"), fast=\"fp32\"; random weights and calibration, no labels)")
    print(text)
    return 2 if any(failed(r) for r in rows) else 0


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main(get_args_parser().parse_args())))
