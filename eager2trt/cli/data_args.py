"""The data flags resnet_torch.py, resnet_tensorrt.py and eager2trt-sensitivity share: defined once, with one default
and one validator each (Polygraphy's tools/args habit)."""

import argparse
import math
from pathlib import Path

from .. import contract
from ..errors import PipelineError, require_int
from ..jobs import DataOptions


def add_data_args(p: argparse.ArgumentParser, data_dir_default=contract.DATA_DIR, data_help: str = "") -> None:
    p.add_argument("--data-dir", type=Path, default=data_dir_default,
                   help=(data_help or "the images: CIFAR-10 (torchvision's layout, or train/ and test/ folders of "
                         "32x32 PNGs: the cached CIFAR-10 path) or any torchvision ImageFolder layout (train/ and "
                         "val/ or test/, <class>/<image> of any size, JPEG/PNG/WebP; docs/data.md)"))
    p.add_argument("--download", action="store_true", help="download CIFAR-10 through torchvision")
    p.add_argument("--image-size", type=int, default=None,
                   help="image folders: square input size; resize + center crop for evaluation and calibration, "
                        "RandomResizedCrop + flip for training (default: 224; given, the folder is always read as an "
                        "image folder)")
    p.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="image folders: normalization mean (default: ImageNet's 0.485 0.456 0.406)")
    p.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="image folders: normalization std (default: ImageNet's 0.229 0.224 0.225)")
    p.add_argument("--workers", type=int, default=2, help="image folders: DataLoader worker processes (0: none)")


def check_data_args(args) -> None:
    """One sentence naming the flag for a bad --image-size, --mean, --std or --workers; a missing --data-dir."""
    require_int("--image-size", args.image_size)
    require_int("--workers", args.workers, minimum=0)
    for flag, values in (("--mean", args.mean), ("--std", args.std)):
        if values is not None and not all(math.isfinite(v) for v in values):
            raise PipelineError(f"{flag} {' '.join(map(str, values))} is not finite; pass three finite numbers, one "
                                f"per channel (R G B)")
    if args.std is not None and min(args.std) <= 0:
        raise PipelineError(f"--std {' '.join(map(str, args.std))} has a value at or below 0; pass three positive "
                            f"numbers, e.g. 0.229 0.224 0.225")
    if args.data_dir is not None and args.data_dir.exists() and not args.data_dir.is_dir():
        raise PipelineError(f"--data-dir {args.data_dir} is a file, not a folder; pass the data set's root folder")


def data_options(args) -> DataOptions:
    return DataOptions(data_dir=args.data_dir, download=args.download, image_size=args.image_size,
                       mean=tuple(args.mean) if args.mean else None, std=tuple(args.std) if args.std else None,
                       workers=args.workers)


def add_calibration_file_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib-data", type=Path, default=None,
                   help=f"calibrate on X.npy (float32 NCHW samples stacked on dim 0, normalized) or X.npz holding that "
                        f"array under the input name '{contract.INPUT_NAME}' (ModelOpt's --calibration_data)")
    p.add_argument("--data-loader-script", default=None, metavar="S.py[:func]",
                   help=f"calibrate on the batches that func (default load_data) returns or yields: feed dicts "
                        f"{{'{contract.INPUT_NAME}': array}}, arrays, or (feed, labels) pairs (Polygraphy's "
                        f"convention; docs/data.md)")
