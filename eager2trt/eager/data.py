"""CIFAR-10 decoded once into uint8 tensors, with batch augmentation that runs on any device.

Two layouts are accepted: torchvision's (`cifar-10-batches-py`, optionally downloaded) and an
image folder (`train/<class>/*.png`, `test/<class>/*.png`, sorted folder names = label order).
Decoding 60,000 PNGs costs tens of seconds, so the arrays are cached as one .npz file.
"""

import contextlib
import hashlib
import os
import pickle
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
CIFAR10_CLASSES = 10
CIFAR10_CHW = (3, 32, 32)  # one image, CHW
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

    def take(self, idx) -> "Split":
        """The samples at positions `idx`, in that order."""
        return Split(self.images[idx], self.labels[idx])

    def batches(self, batch_size: int):
        """Normalized float batches and labels in stored order (iterate_batches)."""
        return iterate_batches(self, batch_size)

    def epoch(self, batch_size: int, generator: Optional[torch.Generator] = None):
        """One shuffled, augmented training epoch of uint8 batches (epoch_batches)."""
        return epoch_batches(self, batch_size, generator)


def layout_help(root: Path) -> str:
    """What a CIFAR-10 folder must hold, and how to read any other folder instead (docs/data.md)."""
    return (f"expected either torchvision's layout ({root}/cifar-10-batches-py, use --download where the "
            f"internet is reachable) or an image folder ({root}/train/<class>/*.png with 50,000 images and "
            f"{root}/test/<class>/*.png with 10,000); any other image folder (train/ and val/ or test/ class "
            f"folders) is read with --image-size N")


def _unreadable(path: Path, exc: OSError, what: str = "folder") -> PipelineError:
    if isinstance(exc, PermissionError):
        return PipelineError(f"cannot read the {what} {path} (permission denied); make the data readable, e.g. "
                             f"chmod -R u+rX {path}")
    return PipelineError(f"cannot read the {what} {path} ({exc.strerror or exc}); check the data folder")


def _entries(folder: Path) -> list[os.DirEntry]:
    """The folder's entries; an unreadable folder is named ("permission denied"), never read as empty."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError as exc:
        raise _unreadable(folder, exc) from None


def _ignore_hidden(names: list[str], folder: Path, what: str) -> list[str]:
    """Drop names starting with '.', with one notice: .ipynb_checkpoints, .DS_Store, macOS ._* files are no data."""
    hidden = sorted(n for n in names if n.startswith("."))
    if hidden:
        shown = ", ".join(hidden[:3]) + (f" and {len(hidden) - 3} more" if len(hidden) > 3 else "")
        print(f"notice: ignoring hidden {what} in {folder}: {shown}", file=sys.stderr)
    return [n for n in names if not n.startswith(".")]


def class_folder_names(folder: Path) -> list[str]:
    """Sorted class folder names in `folder`; hidden folders are ignored (with a notice), since one sorting
    first would shift every label by one."""
    names = [e.name for e in _entries(folder) if e.is_dir()]
    return sorted(_ignore_hidden(names, folder, "folders"))


def _class_names(root: Path, split: str) -> list[str]:
    return class_folder_names(root / split)


def check_numbered_classes(folder: Path, names: list[str]) -> None:
    """Raise when class folders are numbers sorted as text (10 before 2): the sorted names are the label order."""
    numbers = [int(n) for n in names if n.isdecimal()]
    if len(numbers) == len(names) and sorted(numbers) != [int(n) for n in names]:
        raise PipelineError(f"the class folders of {folder} are numbers sorted as text ({', '.join(names[:4])}, "
                            f"...), so folder {names[1]} would take label 1; the sorted folder names are the label "
                            f"order, so rename them with leading zeros (e.g. {int(names[0]):02d}, {int(names[1]):02d})")


def _check_class_names(root: Path) -> list[str]:
    """The label order: sorted class folder names, which must be the same in train/ and test/."""
    train, test = _class_names(root, "train"), _class_names(root, "test")
    if train != test:
        only_train = ", ".join(sorted(set(train) - set(test))) or "none"
        only_test = ", ".join(sorted(set(test) - set(train))) or "none"
        raise PipelineError(f"class folders of {root / 'train'} and {root / 'test'} differ (only in train: "
                            f"{only_train}; only in test: {only_test}), so labels would not line up; give both "
                            f"splits the same class folder names")
    check_numbered_classes(root / 'train', train)
    if len(train) != CIFAR10_CLASSES:
        raise PipelineError(f"{root / 'train'} and {root / 'test'} hold {len(train)} class folders "
                            f"({', '.join(train[:12]) or 'none'}), not CIFAR-10's {CIFAR10_CLASSES}; the sorted folder "
                            f"names are the label order, so remove the extra folders or add the missing ones")
    return train


def _image_folder_files(root: Path, split: str, classes: list[str]) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = root / split / name
        pngs = [e.name for e in _entries(folder) if e.name.endswith(".png")]
        found = [folder / n for n in sorted(_ignore_hidden(pngs, folder, "files"))]
        if not found:
            raise PipelineError(f"class folder {folder} holds no .png images, so it would take label {label} and "
                                f"every image would be scored against a shifted label; remove it, or put its "
                                f"images back")
        files += found
        labels += [label] * len(found)
    return files, labels


def check_label_set(split: Split, num_classes: int, name: str = "test") -> None:
    """Raise unless the labels of `split` are exactly 0..num_classes-1, each present: the label set a model with
    `num_classes` outputs is evaluated against (a missing or extra label means the labels do not line up)."""
    labels = split.labels
    if len(labels) == 0:
        raise PipelineError(f"the {name} split holds no images; check the data folder")
    present = torch.unique(labels.cpu())
    lo, hi = int(present.min()), int(present.max())
    if lo < 0 or hi >= num_classes or len(present) != num_classes:
        missing = sorted(set(range(num_classes)) - set(present.tolist()))
        raise PipelineError(f"the {name} split has labels {lo}..{hi} ({len(present)} distinct"
                            f"{', missing ' + ', '.join(map(str, missing[:10])) if missing else ''}) but the model "
                            f"has {num_classes} outputs, so its scores would be compared against the wrong labels; "
                            f"use data with exactly {num_classes} classes (labels 0..{num_classes - 1})")


def _check_counts(root: Path, counts: dict, classes: dict, strict: bool) -> None:
    expected = CIFAR10_COUNTS if strict else {s: 1 for s in CIFAR10_COUNTS}
    bad = [s for s in expected if counts.get(s, 0) < expected[s] or (strict and counts[s] != expected[s])]
    bad += [s for s in classes if classes[s] != CIFAR10_CLASSES and s not in bad]
    if bad:
        found = ", ".join(f"{s}: {counts.get(s, 0)} images in {classes.get(s, 0)} classes" for s in expected)
        raise PipelineError(f"CIFAR-10 under {root} is incomplete (found {found}); {layout_help(root)}")


def _decode_png(path: Path) -> np.ndarray:
    """One image as HWC uint8 RGB; an unreadable file is named in one sentence."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except PermissionError as exc:
        raise _unreadable(path, exc, "image") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL: UnidentifiedImageError, truncated data, bad chunks
        raise PipelineError(f"{path} is not a readable PNG image ({str(exc).splitlines()[0][:120]}); replace it "
                            f"with the original CIFAR-10 file") from None


def _decode_image_folder(root: Path, strict: bool, listing: dict) -> dict[str, Split]:
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
        raise PipelineError(f"CIFAR-10 under {root} could not be read ({exc}); {layout_help(root)}") from None
    except OSError as exc:  # urllib's URLError (no network, DNS, proxy) is an OSError, so are disk errors
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        if download:
            raise PipelineError(f"could not download CIFAR-10 into {root} ({reason}); connect to the internet, or "
                                f"copy cifar-10-batches-py (or train/ and test/ image folders) there and leave "
                                f"out the download") from None
        raise _unreadable(root / "cifar-10-batches-py", exc) from None
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError) as exc:  # damaged batch files
        raise PipelineError(f"CIFAR-10 under {root / 'cifar-10-batches-py'} is damaged ({type(exc).__name__}: "
                            f"{str(exc)[:80]}); delete that folder and download it again") from None


def _cache_path(root: Path, cache_dir: Path, classes: list[str], listing: dict) -> Path:
    # the class names and the image count of each are part of the key: renamed class folders give other
    # labels, added or removed images other data, so another cache
    counts = [str(labels.count(c)) for _, labels in listing.values() for c in range(len(classes))]
    key = hashlib.sha1("\0".join([str(root.resolve()), *classes, *counts]).encode()).hexdigest()[:12]
    return cache_dir / f"cifar10-{key}.npz"


def load_cifar10(root: Path, download: bool = False, cache_dir: Optional[Path] = DEFAULT_CACHE_DIR,
                 strict: bool = True) -> dict[str, Split]:
    """Load both splits as uint8 tensors, decoding an image folder once and caching it."""
    root = Path(root)
    splits = _load_splits(root, download, cache_dir, strict)
    for name, split in splits.items():
        check_label_set(split, CIFAR10_CLASSES, name)
    return splits


def _load_splits(root: Path, download: bool, cache_dir: Optional[Path], strict: bool) -> dict[str, Split]:
    if (root / "cifar-10-batches-py").is_dir() or download:
        return _load_torchvision(root, download)
    if root.is_dir() and not os.access(root, os.R_OK | os.X_OK):
        raise _unreadable(root, PermissionError()) from None
    if not ((root / "train").is_dir() and (root / "test").is_dir()):
        raise PipelineError(f"no CIFAR-10 found under {root}; {layout_help(root)}")
    classes = _check_class_names(root)
    listing = {s: _image_folder_files(root, s, classes) for s in CIFAR10_COUNTS}
    cache = _cache_path(root, Path(cache_dir), classes, listing) if cache_dir else None
    if cache and cache.is_file():
        splits = _read_cache(cache, root, strict)
        if splits is not None:
            return splits
    splits = _decode_image_folder(root, strict, listing)
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
        with contextlib.suppress(OSError):  # another user's cache, or a read-only cache folder
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
    if not isinstance(split, Split):  # an image folder (eager/folders.py): the same images, decoded per batch
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))
        count = len(split) if limit is None else min(len(split), limit * batch_size)
        return (x for x, _ in split.take(order[:count]).batches(batch_size))
    return _cifar_calibration_batches(split, batch_size, limit)


def _cifar_calibration_batches(split: Split, batch_size: int, limit: Optional[int]):
    if limit is None:
        order, count = torch.arange(len(split), device=split.images.device), len(split)
    else:
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0)).to(split.images.device)
        count = min(len(split), limit * batch_size)
    for start in range(0, count, batch_size):
        yield normalize(split.images[order[start:min(start + batch_size, count)]])
