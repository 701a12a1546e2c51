import numpy as np
import pytest
import torch
from PIL import Image

from eager2trt.data import MEAN, STD, Split, augment, iterate_batches, load_cifar10, normalize
from eager2trt.errors import PipelineError


def make_image_folder(root, per_class=2, classes=10, size=32):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_augment_is_a_shifted_and_maybe_flipped_crop_of_the_padded_image():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flips = 0
    for i in range(len(x)):
        found = False
        for flip in (False, True):
            src = padded[i].flip(-1) if flip else padded[i]
            for dy in range(9):
                for dx in range(9):
                    if torch.equal(src[:, dy:dy + 32, dx:dx + 32], out[i]):
                        found, flips = True, flips + flip
                        break
                if found:
                    break
            if found:
                break
        assert found, f"sample {i} is not a crop of its padded image"
    assert 10 < flips < 54  # p=0.5 flips; both outcomes occur


def test_normalize_matches_torchvision():
    from torchvision.transforms import functional as F

    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    expected = torch.stack([F.normalize(F.to_tensor(F.to_pil_image(img)), MEAN, STD) for img in x])
    torch.testing.assert_close(normalize(x), expected, rtol=1e-5, atol=1e-5)


def test_iterate_batches_keeps_the_last_partial_batch_and_every_sample():
    split = Split(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 32, 32).contiguous(),
                  torch.arange(10))
    batches = list(iterate_batches(split, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(10))


def test_image_folder_is_decoded_with_sorted_labels_and_cached(tmp_path):
    make_image_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    splits = load_cifar10(tmp_path / "data", cache_dir=cache, strict=False)
    assert splits["train"].images.shape == (20, 3, 32, 32)
    assert splits["train"].labels.tolist() == [c for c in range(10) for _ in range(2)]
    img = np.asarray(Image.open(tmp_path / "data" / "train" / "class00" / "0.png"))
    assert torch.equal(splits["train"].images[0], torch.from_numpy(img).permute(2, 0, 1))
    assert len(list(cache.glob("*.npz"))) == 1
    again = load_cifar10(tmp_path / "data", cache_dir=cache, strict=False)
    assert torch.equal(again["test"].images, splits["test"].images)


def test_incomplete_image_folder_names_path_and_counts(tmp_path):
    make_image_folder(tmp_path / "data")
    with pytest.raises(PipelineError, match=r"incomplete \(found train: 20 images in 10 classes.*cifar-10-batches-py"):
        load_cifar10(tmp_path / "data", cache_dir=None, strict=True)


def test_missing_data_names_both_layouts(tmp_path):
    with pytest.raises(PipelineError, match="no CIFAR-10 found.*cifar-10-batches-py.*train/<class>"):
        load_cifar10(tmp_path / "nothing", cache_dir=None)


def test_wrong_image_size_is_rejected(tmp_path):
    make_image_folder(tmp_path / "data", size=16)
    with pytest.raises(PipelineError, match="not a 32x32"):
        load_cifar10(tmp_path / "data", cache_dir=None, strict=False)


def test_real_cifar10_counts_and_statistics(cifar10):
    assert len(cifar10["train"]) == 50_000 and len(cifar10["test"]) == 10_000
    assert torch.bincount(cifar10["test"].labels).tolist() == [1000] * 10
    mean = cifar10["train"].images.float().mean(dim=(0, 2, 3)) / 255
    torch.testing.assert_close(mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=1e-3, rtol=0)
