"""Calibration methods (eager2trt/eager/calibration.py): each range on hand-made tensors whose right answer is
known, the bounded histogram, the scales a converted model carries, the exported graph, and `auto`."""

import math

import numpy as np
import pytest
import torch
from torch.ao import quantization as tq

from eager2trt.checks.agreement import distance_ratio
from graph_checks import onnx_logits, ort_equivalence
from eager2trt.contract import DISTANCE_RATIO_MAX
from eager2trt.eager import calibration as cal
from eager2trt.eager.export import export_onnx
from eager2trt.eager.quantize import EPS, OBSERVERS, prepare_for, qconfig, quantize
from eager2trt.errors import PipelineError
from eager2trt.graph.surgery import make_tensorrt_ready

# |N(0, 1)| exceeds this with probability 1e-4: the 99.99th percentile of the bulk
GAUSS_9999 = 3.8906


def observed(x: torch.Tensor, method: str = "entropy", chunks: int = 10, **kwargs) -> cal.RangeObserver:
    obs = cal.RangeObserver(method=method, eps=EPS, **kwargs)
    for part in x.flatten().chunk(chunks):
        obs(part)
    return obs


def gaussian_with_outliers(n: int = 1_000_000, outliers: int = 10, at: float = 1000.0) -> torch.Tensor:
    x = torch.randn(n, generator=torch.Generator().manual_seed(0))
    x[:outliers] = at
    return x[torch.randperm(n, generator=torch.Generator().manual_seed(1))]


def true_mse(x: torch.Tensor, amax: float) -> float:
    """Squared error of the project's symmetric int8 quantization at range amax, computed on the tensor."""
    scale = amax / 127.5
    return float(((torch.fake_quantize_per_tensor_affine(x, scale, 0, -128, 127) - x) ** 2).mean())


def test_minmax_takes_the_outlier_and_the_robust_methods_do_not():
    obs = observed(gaussian_with_outliers())
    assert obs.amax("minmax") == 1000.0
    assert obs.amax("percentile") == pytest.approx(GAUSS_9999, rel=0.03)
    # entropy cannot go below 128 of the 2048 bins, i.e. 1000/16 here; well under the outlier
    assert obs.amax("entropy") <= 1000.0 / 16 + 1e-6


def test_moderate_outliers_entropy_clips_near_the_bulk():
    # (mse keeps these: 100 values clipped by ~36 cost more squared error than the coarser steps; see the
    # brute-force test below)
    obs = observed(gaussian_with_outliers(outliers=100, at=40.0))
    assert 3.0 < obs.amax("entropy") < 10.0


def test_uniform_tensor_every_method_keeps_nearly_all_of_the_range():
    x = torch.rand(500_000, generator=torch.Generator().manual_seed(0)) * 2 - 1
    obs = observed(x)
    top = float(x.abs().max())
    for method in ("minmax", "percentile", "entropy", "mse"):
        assert obs.amax(method) == pytest.approx(top, rel=0.01), method


@pytest.mark.parametrize("kind", ["gauss_outliers", "laplace", "relu"])
def test_mse_range_is_the_brute_force_optimum(kind):
    gen = torch.Generator().manual_seed(0)
    if kind == "gauss_outliers":
        x = gaussian_with_outliers(50_000, outliers=10, at=30.0)
    elif kind == "laplace":
        x = torch.distributions.Laplace(0.0, 1.0).sample((50_000,))
    else:
        x = torch.relu(torch.randn(50_000, generator=gen)) ** 2
    found = observed(x).amax("mse")
    grid = np.linspace(0.05, 1.0, 200) * float(x.abs().max())
    best = min(true_mse(x, a) for a in grid)
    assert true_mse(x, found) <= 1.05 * best


def test_entropy_equals_a_direct_search_over_candidates():
    """The vectorized search against the textbook loop: P with clipped counts in the last bin, Q merged into 128
    levels and spread over non-empty bins, eps counts in an empty last bin, the last minimum of KL(P||Q)."""
    rng = np.random.default_rng(0)
    for trial in range(4):
        x = np.abs(rng.standard_normal(50_000)) * rng.uniform(0.5, 3)
        x[:rng.integers(1, 30)] = rng.uniform(10, 60)
        hist, _ = np.histogram(x, bins=512, range=(0, x.max()))
        if trial == 3:
            hist[::5] = 0  # empty bins inside the range
        width = x.max() / 512
        assert cal.entropy_amax(hist, width) == pytest.approx(_direct_entropy(hist, width))


def _direct_entropy(h, width, levels=128, eps=1e-4):
    h = h.astype(float)
    best, best_i = np.inf, None
    for i in range(levels, len(h) + 1):
        p = h[:i].copy()
        p[-1] += h[i:].sum()
        level = (np.arange(i) * levels) // i
        mass = np.bincount(level, weights=h[:i], minlength=levels)
        count = np.bincount(level, weights=h[:i] > 0, minlength=levels)
        q = np.where(h[:i] > 0, mass[level] / np.maximum(count[level], 1), 0.0)
        if q[-1] == 0 and p[-1] > 0:
            q[-1] = eps
        p, q = p / p.sum(), q / h[:i].sum()
        s = p > 0
        d = np.sum(p[s] * np.log(p[s] / q[s]))
        if d <= best:
            best, best_i = d, i
    return best_i * width


def test_widening_merges_bins_exactly():
    gen = torch.Generator().manual_seed(0)
    parts = [torch.randn(20_000, generator=gen) * s for s in (0.1, 1.0, 37.0)]
    obs = cal.RangeObserver()
    for p in parts:
        obs(p)
    limit = obs.limit.item()
    ref, _ = np.histogram(torch.cat(parts).numpy(), bins=2 * cal.BINS, range=(-limit, limit))
    assert obs.histogram.sum().item() == 60_000
    assert np.abs(obs.histogram.numpy() - ref).max() <= 2  # float32 vs float64 rounding at bin edges only
    assert float(torch.cat(parts).abs().max()) <= limit < 2 * float(torch.cat(parts).abs().max())


def test_memory_does_not_grow_with_the_number_of_batches():
    def state(batches):
        obs = cal.RangeObserver()
        gen = torch.Generator().manual_seed(0)
        for i in range(batches):
            obs(torch.randn(4096, generator=gen) * (1 + i))  # ranges keep growing
        return {k: (v.shape, v.dtype) for k, v in obs.state_dict().items()}, obs
    few, _ = state(10)
    many, obs = state(100)
    assert few == many
    assert obs.histogram.sum().item() == 100 * 4096


def test_zero_only_batches_before_the_first_range_are_counted():
    obs = cal.RangeObserver(method="mse")
    obs(torch.zeros(1000))
    obs(torch.relu(torch.randn(1000, generator=torch.Generator().manual_seed(0))))
    assert obs.histogram.sum().item() == 2000
    assert obs.zeros.item() >= 1000
    assert 0 < obs.amax("mse") <= obs.amax("minmax")


def test_minmax_range_observer_gives_torch_minmax_scales_exactly():
    x = gaussian_with_outliers(100_000, outliers=3, at=17.0)
    for dtype in (torch.quint8, torch.qint8):
        ours = observed(x, "minmax", dtype=dtype)
        ref = tq.MinMaxObserver(dtype=dtype, qscheme=torch.per_tensor_symmetric, eps=EPS)
        for part in x.chunk(10):
            ref(part)
        assert torch.equal(ours.calculate_qparams()[0], ref.calculate_qparams()[0])
        assert torch.equal(ours.calculate_qparams()[1], ref.calculate_qparams()[1])
        assert ours.calculate_qparams()[1].item() == (128 if dtype == torch.quint8 else 0)


def test_bad_options_are_refused_in_one_sentence():
    with pytest.raises(PipelineError, match="percentile"):
        cal.RangeObserver(method="percentile", percentile=0)
    with pytest.raises(PipelineError, match="percentile"):
        qconfig(calibration="percentile", percentile=100.5)
    with pytest.raises(PipelineError, match="calibration"):
        qconfig(calibration="kl")
    with pytest.raises(PipelineError, match="torch_histogram"):
        cal.RangeObserver(method="histogram")
    with pytest.raises(PipelineError, match="inf or NaN"):
        cal.RangeObserver()(torch.tensor([1.0, float("inf")]))


# ---------------------------------------------------------------- on a model

class Tiny(torch.nn.Module):
    """Quantizable in torchvision's way: stubs, fusable conv-bn-relu, a FloatFunctional residual add."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv1, self.bn1, self.relu1 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU()
        self.conv2, self.bn2 = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.add = torch.nn.quantized.FloatFunctional()
        self.pool, self.fc = torch.nn.AdaptiveAvgPool2d(1), torch.nn.Linear(8, 10)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(self.quant(x))))
        x = self.add.add_relu(x, self.bn2(self.conv2(x)))
        return self.dequant(self.fc(torch.flatten(self.pool(x), 1)))

    def fuse_model(self):
        tq.fuse_modules(self, [["conv1", "bn1", "relu1"], ["conv2", "bn2"]], inplace=True)


def tiny_fused():
    torch.manual_seed(0)
    model = Tiny().eval()
    model.fuse_model()
    return model


def calib_batches(n=3):
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 3, 16, 16, generator=gen) for _ in range(n)]
    batches[0][0, :, 0, 0] = 40.0  # one outlier pixel: minmax and the robust methods must differ
    return batches


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_converted_scales_equal_the_observer_ranges(method):
    prepared = prepare_for(tiny_fused(), calibration="auto")
    cal.calibrate(prepared, calib_batches())
    amax = cal.ranges(prepared, method)
    int8 = cal.convert_copy(prepared, method)
    assert int8.quant.scale.item() == pytest.approx(max(amax["quant.activation_post_process"] / 127.5, EPS), rel=1e-6)
    assert int8.conv1.scale == pytest.approx(max(amax["conv1.activation_post_process"] / 127.5, EPS), rel=1e-6)
    assert int8.quant.zero_point.item() == 128
    assert amax["quant.activation_post_process"] < cal.ranges(prepared, "minmax")["quant.activation_post_process"]


@pytest.mark.parametrize("calibration", ["percentile", "entropy", "mse"])
def test_exported_graph_stays_exact_and_agrees_with_pytorch(calibration, tmp_path):
    torch.backends.quantized.engine = "qnnpack"  # faithful to the Q/DQ graph on every CPU
    batches = calib_batches()
    int8 = quantize(tiny_fused(), batches, calibration=calibration, engine="qnnpack")
    exported = export_onnx(int8, tmp_path / "int8.onnx", example=batches[0])
    import onnx

    original = onnx.load(str(exported))
    ready, _ = make_tensorrt_ready(original)
    inputs = [b.numpy() for b in batches]
    assert ort_equivalence(original, ready, inputs).passed
    graph = onnx_logits(ready, inputs).astype(np.float64)
    with torch.no_grad():
        pt = torch.cat([int8(b) for b in batches]).double().numpy()
        fp32 = torch.cat([tiny_fused()(b) for b in batches]).double().numpy()
    # the project's agreement rule: the two INT8 computations closer to each other than either is to FP32
    assert distance_ratio(pt, graph, fp32) < DISTANCE_RATIO_MAX


def test_one_pass_serves_every_method_including_pytorchs_histogram():
    batches = calib_batches()
    prepared = prepare_for(tiny_fused(), calibration="auto", auto_methods=cal.METHODS)
    cal.calibrate(prepared, batches)
    for method, observer in (("histogram", tq.HistogramObserver), ("minmax", tq.MinMaxObserver)):
        alone = prepare_for(tiny_fused(), calibration=method)
        cal.calibrate(alone, batches)
        ref, ours = tq.convert(alone), cal.convert_copy(prepared, method)
        assert ours.conv1.scale == pytest.approx(ref.conv1.scale, rel=1e-6), method
        assert ours.quant.scale.item() == pytest.approx(ref.quant.scale.item(), rel=1e-6), method


def test_auto_picks_the_most_accurate_method_on_the_holdout():
    fused, batches = tiny_fused(), calib_batches()
    with torch.no_grad():
        labels = [fused(b).argmax(1) for b in batches]  # the FP32 model's own answers: a well-defined target
    prepared = prepare_for(fused, calibration="auto")
    cal.calibrate(prepared, batches)
    method, table, int8 = cal.choose_calibration(prepared, batches, labels)
    assert set(table) == set(cal.AUTO_METHODS)
    assert table[method] == max(table.values())
    assert cal.top1(int8, batches, labels) == table[method]
    chosen = quantize(fused, batches, calibration="auto", engine="qnnpack", holdout=(batches, labels))
    assert chosen.calibration_choice == {"method": method, "holdout_accuracy": table}


def test_auto_without_holdout_is_refused():
    with pytest.raises(PipelineError, match="held-out"):
        quantize(tiny_fused(), calib_batches(), calibration="auto", engine="qnnpack")


def test_every_named_method_quantizes():
    assert set(OBSERVERS) == set(cal.METHODS)
    for calibration in OBSERVERS:
        int8 = quantize(tiny_fused(), calib_batches(1), calibration=calibration, engine="qnnpack")
        assert math.isfinite(float(int8.conv1.scale))


def test_split_training_is_disjoint_and_random():
    from eager2trt.eager.data import Split

    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)
    labels = torch.arange(100) // 10  # sorted by class, as the image-folder layout is
    calib, hold = cal.split_training(Split(images, labels), 30, 20)
    a, b = set(calib.images.flatten().tolist()), set(hold.images.flatten().tolist())
    assert len(a) == 30 and len(b) == 20 and not a & b
    assert len(set(calib.labels.tolist())) > 3  # not the first 30 images, which hold 3 classes
    with pytest.raises(PipelineError, match="training images"):
        cal.split_training(Split(images, labels), 90, 20)
