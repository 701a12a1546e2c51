"""Summarize trtexec --exportLayerInfo JSON: fused convolutions, INT8 inputs, residual Adds, separate layers."""

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from ..errors import run_cli
from ..runtime.layer_info import LayerSummary, format_summary, summarize


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eager2trt.cli.layer_info", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("files", type=Path, nargs="+", metavar="FILE", help="trtexec --exportLayerInfo JSON files")
    p.add_argument("--json", action="store_true", default=False, help="print the summaries as JSON instead of text")
    return p


def main(args) -> list[LayerSummary]:
    summaries = [summarize(f) for f in args.files]
    if args.json:
        print(json.dumps([asdict(s) for s in summaries], indent=2))
    else:
        print("\n".join(format_summary(s) for s in summaries))
    return summaries


def run() -> None:
    run_cli(lambda: main(get_args_parser().parse_args()))


if __name__ == "__main__":
    run()
