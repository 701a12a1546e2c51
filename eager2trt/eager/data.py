"""CIFAR-10 decoded once into uint8 tensors, with batch augmentation that runs on any device.

Two layouts are accepted: torchvision's (`cifar-10-batches-py`, optionally downloaded) and an
image folder (`train/<class>/*.png`, `test/<class>/*.png`, sorted folder names = label order).
Decoding 60,000 PNGs costs tens of seconds, so the arrays are cached as one .npz file.
"""

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from ..artifacts import atomic_path
from ..errors import PipelineError

# The reference normalizes with ImageNet statistics; we keep them so checkpoints stay comparable.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CIFAR10_COUNTS = {"train": 50_000, "test": 10_000}
NUM_CLASSES = 10
PADDING = 4
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "eager2trt"


@dataclass
class Split:
    """Images as uint8 NCHW and labels as int64, on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    def subset(self, n: Optional[int]) -> "Split":
        """The first `n` samples of a fixed random permutation (all of them when n is None)."""
        if n is None or n >= len(self.labels):
            return self
        idx = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(0))[:n]
        return Split(self.images[idx.to(self.images.device)], self.labels[idx.to(self.labels.device)])

    def __len__(self) -> int:
        return len(self.labels)


def _layout_help(root: Path) -> str:
    return (f"expected either torchvision's layout ({root}/cifar-10-batches-py, use --download where the "
            f"internet is reachable) or an image folder ({root}/train/<class>/*.png with 50,000 images and "
            f"{root}/test/<class>/*.png with 10,000)")


def _class_names(root: Path, split: str) -> list[str]:
    return sorted(d.name for d in (root / split).iterdir() if d.is_dir())


def _check_class_names(root: Path) -> list[str]:
    """The label order: sorted class folder names, which must be the same in train/ and test/."""
    train, test = _class_names(root, "train"), _class_names(root, "test")
    if train != test:
        only_train = ", ".join(sorted(set(train) - set(test))) or "none"
        only_test = ", ".join(sorted(set(test) - set(train))) or "none"
        raise PipelineError(f"class folders of {root / 'train'} and {root / 'test'} differ (only in train: "
                            f"{only_train}; only in test: {only_test}), so labels would not line up; give both "
                            f"splits the same class folder names")
    return train


def _image_folder_files(root: Path, split: str, classes: list[str]) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted((root / split / name).glob("*.png"))
        files += found
        labels += [label] * len(found)
    return files, labels


def _check_counts(root: Path, counts: dict, classes: dict, strict: bool) -> None:
    expected = CIFAR10_COUNTS if strict else {s: 1 for s in CIFAR10_COUNTS}
    bad = [s for s in expected if counts.get(s, 0) < expected[s] or (strict and counts[s] != expected[s])]
    bad += [s for s in classes if classes[s] != NUM_CLASSES and s not in bad]
    if bad:
        found = ", ".join(f"{s}: {counts.get(s, 0)} images in {classes.get(s, 0)} classes" for s in expected)
        raise PipelineError(f"CIFAR-10 under {root} is incomplete (found {found}); {_layout_help(root)}")


def _decode_png(path: Path) -> np.ndarray:
    """One image as HWC uint8 RGB; an unreadable file is named in one sentence."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:  # PIL: UnidentifiedImageError, truncated data, bad chunks
        raise PipelineError(f"{path} is not a readable PNG image ({str(exc).splitlines()[0][:120]}); replace it "
                            f"with the original CIFAR-10 file") from None


def _decode_image_folder(root: Path, strict: bool, classes: list[str]) -> dict[str, Split]:
    listing = {s: _image_folder_files(root, s, classes) for s in CIFAR10_COUNTS}
    _check_counts(root, {s: len(v[0]) for s, v in listing.items()},
                  {s: len(set(v[1])) for s, v in listing.items()}, strict)
    splits = {}
    for split, (files, labels) in listing.items():
        images = np.empty((len(files), 32, 32, 3), dtype=np.uint8)
        for i, f in enumerate(tqdm(files, desc=f"decoding {split} PNGs", unit="img", mininterval=1.0)):
            arr = _decode_png(f)
            if arr.shape != (32, 32, 3):
                raise PipelineError(f"{f} is {arr.shape[1]}x{arr.shape[0]}, not a 32x32 CIFAR-10 image; "
                                    f"replace the data with the original CIFAR-10")
            images[i] = arr
        splits[split] = _to_split(images, np.asarray(labels))
    return splits


def _to_split(images_nhwc: np.ndarray, labels) -> Split:
    images = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    return Split(images, torch.as_tensor(np.asarray(labels), dtype=torch.int64))


def _load_torchvision(root: Path, download: bool) -> dict[str, Split]:
    from torchvision.datasets import CIFAR10

    try:
        return {s: _to_split(ds.data, ds.targets) for s in CIFAR10_COUNTS
                for ds in [CIFAR10(str(root), train=(s == "train"), download=download)]}
    except RuntimeError as exc:  # torchvision raises RuntimeError for missing or corrupt batches
        raise PipelineError(f"CIFAR-10 under {root} could not be read ({exc}); {_layout_help(root)}") from None


def _cache_path(root: Path, cache_dir: Path, classes: list[str]) -> Path:
    # the class names are part of the key: renamed class folders give other labels, so another cache
    key = hashlib.sha1("\0".join([str(root.resolve()), *classes]).encode()).hexdigest()[:12]
    return cache_dir / f"cifar10-{key}.npz"


def load_cifar10(root: Path, download: bool = False, cache_dir: Optional[Path] = DEFAULT_CACHE_DIR,
                 strict: bool = True) -> dict[str, Split]:
    """Load both splits as uint8 tensors, decoding an image folder once and caching it."""
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir() or download:
        return _load_torchvision(root, download)
    if not ((root / "train").is_dir() and (root / "test").is_dir()):
        raise PipelineError(f"no CIFAR-10 found under {root}; {_layout_help(root)}")
    classes = _check_class_names(root)
    cache = _cache_path(root, Path(cache_dir), classes) if cache_dir else None
    if cache and cache.exists():
        splits = _read_cache(cache, root, strict)
        if splits is not None:
            return splits
    splits = _decode_image_folder(root, strict, classes)
    if cache:
        try:
            with atomic_path(cache) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **{f"{s}_x": v.images.permute(0, 2, 3, 1).numpy() for s, v in splits.items()},
                             **{f"{s}_y": v.labels.numpy() for s, v in splits.items()})
        except PipelineError:
            pass  # an unwritable cache only costs time on the next run
    return splits


def _read_cache(cache: Path, root: Path, strict: bool) -> Optional[dict[str, Split]]:
    """The cached splits, or None after discarding a corrupt or stale cache with a one-line notice."""
    try:
        with np.load(cache, allow_pickle=False) as z:
            splits = {s: _to_split(z[f"{s}_x"], z[f"{s}_y"]) for s in CIFAR10_COUNTS}
        _check_counts(root, {s: len(v) for s, v in splits.items()},
                      {s: len(torch.unique(v.labels)) for s, v in splits.items()}, strict)
        return splits
    except Exception as exc:  # a damaged .npz raises BadZipFile, EOFError, zlib/CRC errors, ValueError...
        reason = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        print(f"notice: discarding the decoded-data cache {cache} ({reason}); decoding the images again",
              file=sys.stderr)
        cache.unlink(missing_ok=True)
        return None


def normalize(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32 normalized with the reference's mean and std."""
    mean = torch.tensor(MEAN, device=images_u8.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images_u8.device).view(1, 3, 1, 1)
    return (images_u8.float() / 255.0 - mean) / std


def augment(images_u8: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """RandomCrop(32, padding=4) + RandomHorizontalFlip on a whole uint8 batch, in one gather.

    Same distribution as torchvision's per-image transforms (zero padding, p=0.5 flip), but done
    as tensor ops so it runs where the data lives, GPU included.
    """
    n, c, h, w = images_u8.shape
    dev = images_u8.device
    padded = torch.nn.functional.pad(images_u8, (PADDING,) * 4)
    dy = torch.randint(0, 2 * PADDING + 1, (n, 1), device=dev, generator=generator)
    dx = torch.randint(0, 2 * PADDING + 1, (n, 1), device=dev, generator=generator)
    flip = torch.rand((n, 1), device=dev, generator=generator) < 0.5
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = dy + ar_h
    cols = dx + torch.where(flip, w - 1 - ar_w, ar_w)
    return padded[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def iterate_batches(split: Split, batch_size: int, shuffle: bool = False,
                    generator: Optional[torch.Generator] = None):
    """Yield normalized float batches and labels (no augmentation: evaluation and calibration); the last
    partial batch is kept, as DataLoader does."""
    n = len(split)
    order = (torch.randperm(n, device=split.images.device, generator=generator) if shuffle
             else torch.arange(n, device=split.images.device))
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield normalize(split.images[idx]), split.labels[idx]


def epoch_batches(split: Split, batch_size: int, generator: Optional[torch.Generator] = None):
    """One training epoch: shuffle and augment every image in one pass, then yield uint8 batch views.

    Same samples and augmentation distribution as per-batch augmentation, with two launches per epoch
    instead of a dozen per step (airbench's habit).
    """
    order = torch.randperm(len(split), device=split.images.device, generator=generator)
    images = augment(split.images[order], generator)
    labels = split.labels[order]
    for start in range(0, len(split), batch_size):
        yield images[start:start + batch_size], labels[start:start + batch_size]


def calibration_batches(split: Split, batch_size: int, limit: Optional[int] = None):
    """Un-augmented, normalized images for calibration: every image in stored order (limit None), or `limit`
    batches drawn from a fixed random permutation, so that a subset covers every class (an image folder is stored
    class by class: its first batches would be airplanes only)."""
    if limit is None:
        order, count = torch.arange(len(split), device=split.images.device), len(split)
    else:
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0)).to(split.images.device)
        count = min(len(split), limit * batch_size)
    for start in range(0, count, batch_size):
        yield normalize(split.images[order[start:min(start + batch_size, count)]])
