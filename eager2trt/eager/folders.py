"""Any torchvision ImageFolder data set (train/ and val/ or test/, any number of classes, JPEG/PNG/WebP of any size)
with torchvision's standard classification presets, decoded in batches by a DataLoader with workers.

A FolderSplit offers what the training loop, the evaluation loop and calibration use of a CIFAR-10 Split
(`labels`, `subset`, `take`, `batches`, `epoch`), so both kinds of data go through the same code. Labels are known
from the file listing, so nothing is decoded until batches are read.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import PipelineError
from .data import check_numbered_classes, class_folder_names

# torchvision's ImageNet presets (references/classification/presets.py): evaluation resizes to size * 256/224
# and center-crops to size; training takes a RandomResizedCrop of size and a horizontal flip
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224
RESIZE_RATIO = 256 / 224
EVAL_SPLITS = ("val", "test")  # the first present is evaluated on


@dataclass(frozen=True)
class Presets:
    """How images become model inputs: square `image_size`, normalized with `mean`/`std`; `workers` DataLoader
    processes decode them."""

    image_size: int = DEFAULT_IMAGE_SIZE
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    workers: int = 2

    def eval_transform(self):
        """Resize (shorter side to size * 256/224) + center crop: evaluation and calibration."""
        from torchvision.transforms import v2 as T

        return T.Compose([T.Resize(round(self.image_size * RESIZE_RATIO), antialias=True),
                          T.CenterCrop(self.image_size), *self._to_normalized(T)])

    def train_transform(self):
        """RandomResizedCrop + horizontal flip: training."""
        from torchvision.transforms import v2 as T

        return T.Compose([T.RandomResizedCrop(self.image_size, antialias=True), T.RandomHorizontalFlip(),
                          *self._to_normalized(T)])

    def _to_normalized(self, T) -> list:
        return [T.PILToTensor(), T.ToDtype(torch.float32, scale=True), T.Normalize(self.mean, self.std)]


class _Images(torch.utils.data.Dataset):
    """The samples at `indices` of an ImageFolder, through `transform` (one listing, several views)."""

    def __init__(self, folder: ImageFolder, indices: list, transform):
        self.folder, self.indices, self.transform = folder, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        path, label = self.folder.samples[self.indices[i]]
        try:
            image = self.folder.loader(path)
        except (OSError, SyntaxError, ValueError) as exc:  # PIL: UnidentifiedImageError, truncated data
            raise PipelineError(f"{path} is not a readable image ({str(exc).splitlines()[0][:120]}); replace or "
                                f"remove it") from None
        return self.transform(image), label


class FolderSplit:
    """One split of an image folder: labels from the listing, images decoded per batch by a DataLoader."""

    def __init__(self, folder: ImageFolder, presets: Presets, indices: Optional[list] = None):
        self.folder, self.presets = folder, presets
        self.indices = list(range(len(folder.samples))) if indices is None else list(indices)
        targets = torch.as_tensor(folder.targets, dtype=torch.int64)
        self.labels = targets[torch.as_tensor(self.indices, dtype=torch.int64)]
        self.classes = folder.classes

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def image_shape(self) -> tuple:
        return (3, self.presets.image_size, self.presets.image_size)

    def to(self, device) -> "FolderSplit":
        """Itself: batches are moved to the device by whoever consumes them."""
        return self

    def take(self, idx) -> "FolderSplit":
        """The samples at positions `idx` (a tensor or list), in that order."""
        return FolderSplit(self.folder, self.presets, [self.indices[int(i)] for i in idx])

    def subset(self, n: Optional[int]) -> "FolderSplit":
        """The first `n` samples of the fixed random permutation Split.subset uses (all of them when n is None)."""
        if n is None or n >= len(self):
            return self
        return self.take(torch.randperm(len(self), generator=torch.Generator().manual_seed(0))[:n])

    def batches(self, batch_size: int):
        """Normalized float batches and labels in stored order, evaluation transform (no augmentation)."""
        return self._loader(self.presets.eval_transform(), batch_size, shuffle=False)

    def epoch(self, batch_size: int, generator: Optional[torch.Generator] = None):
        """One training epoch: shuffled, augmented (training transform) batches. The order and the workers' seeds
        come from `generator`, so a seeded (or resumed) run sees the same epoch."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator,
                                 device=generator.device if generator is not None else "cpu"))
        return self._loader(self.presets.train_transform(), batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))

    def _loader(self, transform, batch_size: int, shuffle: bool, generator=None):
        return torch.utils.data.DataLoader(_Images(self.folder, self.indices, transform), batch_size=batch_size,
                                           shuffle=shuffle, generator=generator, num_workers=self.presets.workers,
                                           persistent_workers=False)


class _ImageFolder(ImageFolder):
    """ImageFolder whose class list ignores hidden folders (.ipynb_checkpoints would take label 0)."""

    def find_classes(self, directory):
        classes = class_folder_names(Path(directory))
        if not classes:
            raise PipelineError(f"{directory} holds no class folders; put each class's images in "
                                f"{directory}/<class>/")
        return classes, {c: i for i, c in enumerate(classes)}


def eval_split_name(root: Path) -> str:
    """val/ if present, else test/: the split evaluated on."""
    return next((s for s in EVAL_SPLITS if (Path(root) / s).is_dir()), EVAL_SPLITS[0])


def _folder(root: Path, split: str) -> ImageFolder:
    path = Path(root) / split
    try:
        folder = _ImageFolder(str(path), allow_empty=False)
    except FileNotFoundError as exc:  # a class folder without images, or no folder at all
        raise PipelineError(f"{path}: {str(exc).split('. Supported')[0]} (an empty class folder would shift every "
                            f"label); put images ({', '.join(IMG_EXTENSIONS[:3])}, ...) in every class folder, or "
                            f"remove the empty ones") from None
    check_numbered_classes(path, folder.classes)
    return folder


def load_image_folder(root: Path, presets: Presets = Presets()) -> dict:
    """{"train": FolderSplit, "test": FolderSplit} of an ImageFolder layout: root/train/<class>/*, and
    root/val/<class>/* or root/test/<class>/*; the sorted class folder names are the label order in both."""
    root = Path(root)
    evaluated = eval_split_name(root)
    if not (root / "train").is_dir() or not (root / evaluated).is_dir():
        raise PipelineError(f"no image folder found under {root}; expected {root}/train/<class>/<images> and "
                            f"{root}/val/<class>/<images> (or test/ instead of val/)")
    train, test = _folder(root, "train"), _folder(root, evaluated)
    if train.classes != test.classes:
        only_train = ", ".join(sorted(set(train.classes) - set(test.classes))) or "none"
        only_test = ", ".join(sorted(set(test.classes) - set(train.classes))) or "none"
        raise PipelineError(f"class folders of {root / 'train'} and {root / evaluated} differ (only in train: "
                            f"{only_train}; only in {evaluated}: {only_test}), so labels would not line up; give both "
                            f"splits the same class folder names")
    return {"train": FolderSplit(train, presets), "test": FolderSplit(test, presets)}
