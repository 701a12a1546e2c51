import numpy as np
import pytest
import torch
from PIL import Image

from eager2trt.eager.data import MEAN, STD, Split, augment, iterate_batches, load_cifar10, normalize
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


def test_class_folders_must_match_by_name(tmp_path):
    make_image_folder(tmp_path / "data")
    (tmp_path / "data" / "test" / "class00").rename(tmp_path / "data" / "test" / "plane")
    with pytest.raises(PipelineError, match=r"class folders of .*train and .*test differ \(only in train: class00; "
                                            r"only in test: plane\), so labels would not line up"):
        load_cifar10(tmp_path / "data", cache_dir=tmp_path / "cache", strict=False)


@pytest.mark.parametrize("damage", ["truncated", "text"])
def test_undecodable_image_is_named(tmp_path, damage):
    make_image_folder(tmp_path / "data")
    bad = tmp_path / "data" / "train" / "class03" / "1.png"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:200])
    else:
        bad.write_text("not an image\n")
    with pytest.raises(PipelineError, match=rf"{bad} is not a readable PNG image .*replace it"):
        load_cifar10(tmp_path / "data", cache_dir=None, strict=False)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty"])
def test_corrupt_cache_is_discarded_and_rebuilt_with_a_notice(tmp_path, capsys, damage):
    make_image_folder(tmp_path / "data", per_class=20)  # a cache large enough that flipped bytes hit image data
    cache_dir = tmp_path / "cache"
    good = load_cifar10(tmp_path / "data", cache_dir=cache_dir, strict=False)
    (cache,) = cache_dir.glob("*.npz")
    raw = bytearray(cache.read_bytes())
    if damage == "truncated":
        raw = raw[:len(raw) // 2]
    elif damage == "flipped":
        mid = len(raw) // 2
        raw[mid:mid + 64] = bytes(b ^ 0xFF for b in raw[mid:mid + 64])
    else:
        raw = bytearray()
    cache.write_bytes(bytes(raw))
    capsys.readouterr()
    again = load_cifar10(tmp_path / "data", cache_dir=cache_dir, strict=False)
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and notices[0].startswith(f"notice: discarding the decoded-data cache {cache} (")
    assert torch.equal(again["train"].images, good["train"].images)
    assert torch.equal(again["test"].labels, good["test"].labels)
    with np.load(cache) as z:  # rebuilt: readable again
        assert z["train_x"].shape == (200, 32, 32, 3)


def test_calibration_batches_cover_every_class_of_a_class_sorted_split():
    """An image folder is decoded class by class; the first calibration batch must not be one class only."""
    from eager2trt.eager.data import calibration_batches

    labels = torch.arange(10).repeat_interleave(100)  # sorted by class, as an image folder is read
    images = (labels * 20).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
    first = next(calibration_batches(Split(images, labels), batch_size=64, limit=1))
    classes = torch.unique(torch.round((first[:, 0, 0, 0] * STD[0] + MEAN[0]) * 255 / 20))
    assert first.shape == (64, 3, 2, 2) and len(classes) == 10
    assert sum(len(b) for b in calibration_batches(Split(images, labels), 64, limit=3)) == 192
    assert sum(len(b) for b in calibration_batches(Split(images, labels), 64)) == 1000


def test_a_folder_without_train_is_not_counted_as_cifar10(tmp_path):
    """A val/-only image folder was taken for CIFAR-10 (10 classes) and its graph refused for the wrong reason."""
    from eager2trt.jobs import DataOptions, class_count

    (tmp_path / "val" / "cat").mkdir(parents=True)
    with pytest.raises(PipelineError, match=r"has val/ but no train/ folder; expected either .* is read with "
                                            r"--image-size N$"):
        class_count(DataOptions(data_dir=tmp_path))
    assert class_count(DataOptions(data_dir=tmp_path / "absent")) == 10  # the loader says what it expected, later
