"""The pipeline's input types (issues 23 and 24): held-out data streamed as (inputs, labels) pairs from a DataLoader,
label maps (per-pixel top-1, mIoU), a user metric, and the running statistics every check reads (checks/tally.py)
instead of kept outputs."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from eager2trt.checks.tally import Score, Stats
from eager2trt.errors import PipelineError
from eager2trt.pipeline import quantize_to_tensorrt
from tests import zoo


def labelled(name: str, n: int = 48, seed: int = 5, head: int = 0):
    """Seeded inputs for zoo model `name` and labels its FP32 model gives them (argmax of output `head`): FP32
    scores 1.0 on them by construction, so every other figure is its distance from FP32."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *zoo.ZOO[name][1], generator=g)
    with torch.no_grad():
        y = zoo.build(name)(x).argmax(1)
    return x, y


@pytest.fixture(scope="module")
def classifier():
    return zoo.build("hardswish"), zoo.calibration("hardswish", batches=4, batch=8), *labelled("hardswish")


def test_a_dataloader_gives_the_figures_of_the_same_images_as_lists(classifier, tmp_path):
    """Streaming changes nothing measured: every check's figures are those of the list-of-batches run."""
    model, calib, x, y = classifier
    listed = quantize_to_tensorrt(model, calib, tmp_path / "a", images=list(x.split(16)), labels=y)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    streamed = quantize_to_tensorrt(model, calib, tmp_path / "b", data=loader)
    assert streamed.accuracy == listed.accuracy and listed.accuracy["fp32"] == 1.0
    for a, b in zip(listed.checks, streamed.checks):
        assert (a.name, a.value, a.passed) == (b.name, b.value, b.passed)
    assert streamed.tallies["real"].samples == len(x)


def test_data_read_only_once_is_refused_before_anything_is_written(classifier, tmp_path):
    model, calib, x, y = classifier
    with pytest.raises(PipelineError, match="^data is a generator that can be read only once; pass something read "
                                            r"again on every pass \(a torch DataLoader"):
        quantize_to_tensorrt(model, calib, tmp_path, data=((a, b) for a, b in zip(x.split(8), y.split(8))))
    with pytest.raises(PipelineError, match="^data= gives .* pairs; pass either data= or images="):
        quantize_to_tensorrt(model, calib, tmp_path, data=[(x, y)], images=[x])
    assert not list(tmp_path.glob("*.onnx"))


def test_label_maps_are_scored_per_pixel_with_miou(tmp_path):
    """A segmentation model (UNet, per-pixel class maps) with one label map per image."""
    x, y = labelled("unet_convtranspose", n=16)
    assert y.shape == (16, 16, 16)
    result = quantize_to_tensorrt(zoo.build("unet_convtranspose"), zoo.calibration("unet_convtranspose", 4, 8),
                                  tmp_path, images=list(x.split(8)), labels=y, accuracy_budget=100)
    fp32, int8 = result.scores["fp32"], result.scores["int8"]
    assert fp32["top1"] == 1.0 and fp32["miou"] == 1.0 and fp32["counted"] == 16 * 16 * 16
    assert 0.5 < int8["top1"] <= 1.0 and int8["miou"] <= 1.0
    assert result.accuracy["int8"] == int8["top1"] == result.check("int8_accuracy").value


def test_a_user_metric_is_what_the_guards_hold(tmp_path):
    """A detector's box head scored by the user's own function (here: minus the mean box error against targets)."""
    model = zoo.build("detector_two_outputs")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 3, 16, 16, generator=g)
    with torch.no_grad():
        boxes = model(x)[1]  # FP32's own boxes as targets: FP32 scores 0, the best possible

    def box_score(outputs, targets):
        return -float((outputs[1] - targets).abs().mean())

    calib = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(4)]
    result = quantize_to_tensorrt(model, calib, tmp_path, data=list(zip(x.split(8), boxes.split(8))),
                                  metric=box_score)
    # FP32 against its own boxes (batches of 8 here, 16 above: float32 rounding apart); no top-1 on box targets
    assert abs(result.accuracy["fp32"]) < 1e-6 and result.scores["fp32"]["top1"] == 0.0
    assert -0.01 < result.accuracy["int8"] < 0.0 and result.check("int8_accuracy").value == result.accuracy["int8"]
    assert result.check("exact_graph_accuracy").passed


def test_a_failing_metric_is_told_in_one_sentence(classifier, tmp_path):
    model, calib, x, y = classifier

    def broken(outputs, labels):
        return outputs[2].mean()

    with pytest.raises(PipelineError) as info:
        quantize_to_tensorrt(model, calib, tmp_path, images=[x], labels=y, metric=broken)
    assert str(info.value).startswith("metric broken(outputs, labels) fails on a batch (IndexError: list index out "
                                      "of range); it takes a list of output tensors")


def test_stats_accumulate_batch_by_batch_as_over_the_whole():
    g = np.random.default_rng(0)
    a, b = g.normal(size=(30, 5)), g.normal(size=(30, 5))
    whole, parts = Stats.of(a, b), Stats()
    for i in range(0, 30, 7):
        parts.add(a[i:i + 7], b[i:i + 7])
    for field in ("distance", "relative", "mean_abs", "agreement", "max_abs", "samples"):
        assert getattr(parts, field) == pytest.approx(getattr(whole, field), rel=1e-12)
    assert whole.relative == pytest.approx(np.linalg.norm(a - b) / np.linalg.norm(b))
    assert whole.agreement == (a.argmax(1) == b.argmax(1)).mean()


def test_miou_ignores_labels_outside_the_classes():
    logits = np.zeros((1, 2, 2, 2))
    logits[0, 1, 0, :] = 1  # predicts class 1 on the top row, 0 on the bottom row
    labels = torch.tensor([[[1, 0], [0, 255]]])
    score = Score()
    score.add([logits], labels)
    # valid pixels: (1 vs 1), (1 vs 0), (0 vs 0); class 0: inter 1, union 2; class 1: inter 1, union 2
    assert score.counted == 3 and score.accuracy == pytest.approx(2 / 3) and score.miou == pytest.approx(0.5)


def test_a_missed_budget_on_several_outputs_never_advises_the_fallback(tmp_path):
    """The fallback and the layer ranking read one classifier output: a two-head model is told what applies."""
    from eager2trt.checks.result import CheckFailed
    from examples.segmentation_two_heads import TwoHeadUNet

    torch.manual_seed(0)
    model = TwoHeadUNet().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 32, 32, generator=g)
    with torch.no_grad():
        maps = model(x)["seg"].argmax(1)
    with pytest.raises(CheckFailed) as info:  # a zero budget: INT8 must match FP32's every pixel, which it cannot
        quantize_to_tensorrt(model, [torch.randn(8, 3, 32, 32, generator=g)], tmp_path, images=[x], labels=maps,
                             accuracy_budget=0.0)
    text = str(info.value)
    assert text.startswith("check int8_accuracy failed") and "try calibration='auto'" in text and "QAT" in text
    assert "fallback" not in text and "\n" not in text


class Failing(torch.utils.data.Dataset):
    """A data set whose image 10 cannot be read (a truncated file)."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        if i == 10:
            raise OSError("cannot read image 10: truncated file")
        return torch.zeros(3, 16, 16), 0


X, Y = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(9)), torch.arange(8) % 4
BAD_HELD_OUT = [  # (keyword arguments, the sentence's start): found on the first batch, before anything is written
    ({"data": DataLoader(TensorDataset(X, Y, Y), batch_size=8)}, "data yields lists of 3 items; pass an iterable of "
                                                                 "(inputs, labels) pairs"),
    ({"data": [(X, None)]}, "data gives no labels (None) for batch 0; pass (inputs, labels) pairs, or images="),
    ({"images": [X], "labels": torch.eye(4)[Y]}, "the labels have shape (8, 4) for a first output of shape (8, 4); "
                                                 "pass one class index per sample, shape (8,) (one-hot: y.argmax(1))"),
    ({"images": [X], "labels": Y + 4}, "the labels hold 4, outside the 4 classes of the first output (0..3)"),
    ({"images": [X], "labels": Y + 0.5}, "the labels hold non-integer values (e.g. 0.5)"),
    ({"data": [(X, ["cat"] * 8)]}, "the labels are list, not numbers; pass integer class indices"),
    ({"data": DataLoader(Failing(), batch_size=4)}, None),  # batch 2 fails: told, but only when it is read
    ({"images": [X], "metric": lambda outputs, labels: 1.0}, "metric= scores outputs against labels; pass labels="),
    ({"images": [X], "labels": Y, "accuracy_budget": float("nan")}, "accuracy_budget is nan; pass a finite number"),
]


@pytest.mark.parametrize("kwargs, start", BAD_HELD_OUT)
def test_bad_held_out_data_is_one_sentence(classifier, tmp_path, kwargs, start):
    model, calib, _, _ = classifier
    with pytest.raises(PipelineError) as info:
        quantize_to_tensorrt(model, calib, tmp_path, **kwargs)
    text = str(info.value)
    assert "\n" not in text
    if start is None:  # read in the run: the sentence names the batch, the earlier run stays whole
        assert text == ("data fails on batch 2 (OSError: cannot read image 10: truncated file); fix the data set or "
                        "its DataLoader")
    else:
        assert text.startswith(start) and not list(tmp_path.glob("*.onnx"))


def test_outputs_must_keep_the_batch_dimension(tmp_path):
    class Pooled(zoo.TwoOutputDetector):
        def forward(self, x):
            cls, box = super().forward(x)
            return cls, box.mean()

    with pytest.raises(PipelineError, match=r"^output 1 of the model has shape \(\) for a batch of 4; every output "
                                            r"must keep the batch dimension first"):
        quantize_to_tensorrt(Pooled().eval(), [torch.randn(4, 3, 16, 16)], tmp_path)


class _Split:
    """A split of `n` images of `shape` that records the batch sizes it is asked for."""

    def __init__(self, n: int, shape: tuple):
        self.n, self.shape, self.asked = n, shape, []

    def batches(self, batch_size: int):
        self.asked.append(batch_size)
        for start in range(0, self.n, batch_size):
            k = min(batch_size, self.n - start)
            yield torch.zeros(k, *self.shape), torch.zeros(k, dtype=torch.long)


def test_evaluation_batches_shrink_for_large_images_only():
    """CIFAR-10's 32x32 keeps its 500-image batches (its figures were measured so); 224 px takes 64 MiB batches,
    not 300 MB ones (onnxruntime's arenas grow with the batch: batch 250 ran the 24 GiB machine out of memory)."""
    from eager2trt.heldout import EVAL_BATCH_BYTES, SplitBatches, evaluation_batch_size

    assert evaluation_batch_size((3, 32, 32)) == 500
    big = evaluation_batch_size((3, 224, 224))
    assert big == 111 and big * 3 * 224 * 224 * 4 <= EVAL_BATCH_BYTES < (big + 1) * 3 * 224 * 224 * 4
    assert evaluation_batch_size((3, 4096, 4096)) == 1
    split = _Split(250, (3, 224, 224))
    evaluation = SplitBatches(split)
    sizes = [len(x) for x, _ in evaluation]
    assert sizes == [111, 111, 28] and split.asked == [1, 111]
    assert [len(x) for x, _ in evaluation] == sizes and split.asked == [1, 111, 111]  # sized once, every pass alike
