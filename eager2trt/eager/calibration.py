"""Outlier-robust per-tensor activation ranges as eager-mode observers: minmax, percentile, entropy, mse.

One `RangeObserver` keeps, per tensor, the exact min/max and a fixed-size signed histogram whose range grows
by merging adjacent bins (exact, powers of two), so its memory does not depend on how many images it sees;
any method's range is read off that one histogram. The scale is the project's per-tensor symmetric one,
computed by torch.ao's own `_calculate_qparams` from (-amax, amax) exactly as MinMaxObserver computes it from
(min, max) (quint8 zero point 128 or qint8 zero point 0), so graph/surgery.py maps it exactly to TensorRT's
int8 zero point 0. With `torch_histogram=True` it also feeds a stock torch.ao HistogramObserver, so PyTorch's
own method is one more choice of the same calibration pass.

Why not onnxruntime.quantization.calibrate.HistogramCollector: its histograms append bins of the first
batch's width as ranges grow (memory grows with the outliers seen), and its entropy search is a Python
loop over bins (minutes per model). The entropy search here is TensorRT's legacy calibrator algorithm
(Migacz, "8-bit Inference with TensorRT", GTC 2017) as NVIDIA's pytorch-quantization toolkit implements it
(`calib/histogram.py`, `_compute_amax_entropy`: 2048 bins, 128 levels, the last minimum), vectorized.
"""

import copy
import math
import warnings
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from torch.ao import quantization as tq
from torch.ao.quantization.observer import HistogramObserver, UniformQuantizationObserverBase
from tqdm import tqdm

from ..errors import PipelineError, require_choice
from ..runtime.inputs import as_args, rows
from .data import Split

METHODS = ("minmax", "percentile", "entropy", "mse", "histogram")
DEFAULT_PERCENTILE = 99.99
BINS = 2048  # per sign: TensorRT's legacy calibrators and pytorch-quantization use 2048 bins of |x|
ENTROPY_LEVELS = 128  # positive levels of symmetric int8 (pytorch-quantization: 1 << (num_bits - 1))
SMOOTHING = 1e-4  # counts given to empty bins of the candidate distribution (MXNet, onnxruntime)


class RangeObserver(UniformQuantizationObserverBase):
    """Per-tensor symmetric observer: exact min/max plus a bounded histogram; `method` picks the range.

    `method` (minmax, percentile, entropy, mse, or histogram with `torch_histogram`) may be changed after
    calibration and before convert: the collected statistics serve every method.
    """

    def __init__(self, method: str = "entropy", percentile: float = DEFAULT_PERCENTILE, bins: int = BINS,
                 torch_histogram: bool = False, dtype=torch.quint8, qscheme=torch.per_tensor_symmetric,
                 reduce_range: bool = False, eps: float = torch.finfo(torch.float32).eps, **kwargs) -> None:
        if qscheme != torch.per_tensor_symmetric:
            raise PipelineError(f"RangeObserver computes symmetric ranges only, got qscheme {qscheme}; pass "
                                f"qscheme=torch.per_tensor_symmetric")
        if bins < 2 or bins & (bins - 1):
            raise PipelineError(f"bins must be a power of two (the range grows by merging pairs), got {bins}")
        super().__init__(dtype=dtype, qscheme=qscheme, reduce_range=reduce_range, eps=eps, **kwargs)
        self.percentile = check_percentile(percentile)
        self.method = check_method(method, torch_histogram)
        self.bins = bins
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.register_buffer("limit", torch.tensor(0.0))  # the histogram spans [-limit, limit]; 0: not yet set
        self.register_buffer("histogram", torch.zeros(2 * bins, dtype=torch.float64))
        self.register_buffer("zeros", torch.tensor(0.0, dtype=torch.float64))  # exact zeros (ReLU), seen so far
        self.torch_histogram = (HistogramObserver(dtype=dtype, qscheme=qscheme, reduce_range=reduce_range, eps=eps,
                                                  **kwargs) if torch_histogram else None)

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().float()
        lo, hi = torch.aminmax(x)
        if not (torch.isfinite(lo) and torch.isfinite(hi)):
            raise PipelineError("an activation holds inf or NaN during calibration, so no range can be set; "
                                "check the model's FP32 outputs on the calibration images")
        self.min_val.copy_(torch.minimum(lo, self.min_val))
        self.max_val.copy_(torch.maximum(hi, self.max_val))
        zeros = x.numel() - int(torch.count_nonzero(x))
        self.zeros += zeros
        self._add(x, max(-lo.item(), hi.item()), zeros)
        if self.torch_histogram is not None:
            self.torch_histogram(x_orig)
        return x_orig

    def _add(self, x: torch.Tensor, amax: float, zeros: int) -> None:
        """Add `x` to the histogram, first widening its range by a power of two when `amax` falls outside."""
        limit = self.limit.item()
        if amax == 0.0:  # only exact zeros: they go to the first positive bin once a range exists
            if limit > 0.0:
                self.histogram[self.bins] += x.numel()
            return
        if limit == 0.0:
            self.limit.fill_(amax)
            self.histogram[self.bins] += self.zeros.item() - zeros  # the zero-only batches seen before
        elif amax > limit:
            self._widen(math.ceil(math.log2(amax / limit)))
            while self.limit.item() < amax:  # float rounding of log2: one more doubling
                self._widen(1)
        limit = self.limit.item()
        self.histogram += torch.histc(x, bins=2 * self.bins, min=-limit, max=limit).double()

    def _widen(self, doublings: int) -> None:
        """Multiply the range by 2**doublings, merging that many adjacent bins of each sign (exact)."""
        group = min(2 ** doublings, self.bins)
        neg, pos = self.histogram[:self.bins].flip(0), self.histogram[self.bins:]
        merged = [torch.nn.functional.pad(h.view(-1, group).sum(1), (0, self.bins - self.bins // group))
                  for h in (neg, pos)]
        self.histogram.copy_(torch.cat([merged[0].flip(0), merged[1]]))
        self.limit.mul_(2.0 ** doublings)

    def amax(self, method: str = None) -> float:
        """The symmetric range |x| <= amax that `method` (default: this observer's) chooses from the data seen."""
        method = check_method(method or self.method, self.torch_histogram is not None)
        exact = max(-self.min_val.item(), self.max_val.item())
        if method == "minmax" or self.limit.item() == 0.0:
            return exact
        if method == "histogram":
            scale, _ = self.torch_histogram.calculate_qparams()
            return float(scale) * (self.quant_max - self.quant_min) / 2
        neg, pos = self.histogram[:self.bins].flip(0).numpy(), self.histogram[self.bins:].numpy()
        width = self.limit.item() / self.bins
        if method == "percentile":
            return min(percentile_amax(neg + pos, width, self.percentile), exact)
        # Exact zeros (ReLU's) are exact at every range, so the searches leave them out: in the entropy search a
        # zero spike in bin 0 would make any level wider than one bin costly and pick the smallest range
        # (pytorch-quantization's skip_zeros option, for the same reason).
        pos = pos.copy()
        pos[0] = max(pos[0] - self.zeros.item(), 0.0)
        if not (pos.any() or neg.any()):
            return exact
        if method == "entropy":
            return min(entropy_amax(neg + pos, width), exact)
        return min(mse_amax(pos, neg, width, levels=(self.quant_max - self.quant_min) / 2), exact)

    @torch.jit.export
    def calculate_qparams(self):
        if self.method == "histogram":
            return self.torch_histogram.calculate_qparams()
        if self.min_val.item() == float("inf"):  # never run: torch.ao's warning and its default qparams
            return self._calculate_qparams(self.min_val, self.max_val)
        amax = torch.tensor(self.amax())
        return self._calculate_qparams(-amax, amax)

    def extra_repr(self) -> str:
        return f"method={self.method}, percentile={self.percentile}, bins={self.bins}, limit={self.limit.item():.4g}"


def check_method(method: str, torch_histogram: bool = True) -> str:
    """`method` if this observer can compute it, else one sentence naming the choices."""
    require_choice("calibration", method, METHODS)
    if method == "histogram" and not torch_histogram:
        raise PipelineError("method 'histogram' needs the stock HistogramObserver's statistics; build the "
                            "RangeObserver with torch_histogram=True")
    return method


def check_percentile(value: float) -> float:
    """A percentile in (0, 100], else one sentence."""
    if not (isinstance(value, (int, float)) and 0.0 < value <= 100.0):
        raise PipelineError(f"percentile must be a number in (0, 100], e.g. {DEFAULT_PERCENTILE}, got {value!r}")
    return float(value)


def percentile_amax(abs_hist: np.ndarray, width: float, percentile: float) -> float:
    """The |x| below which `percentile` % of the values lie, interpolated linearly inside its bin."""
    cdf = np.cumsum(abs_hist) / abs_hist.sum()
    target = percentile / 100.0
    i = min(int(np.searchsorted(cdf, target)), len(cdf) - 1)
    below = cdf[i - 1] if i else 0.0
    inside = (target - below) / max(cdf[i] - below, 1e-300)
    return (i + min(max(inside, 0.0), 1.0)) * width


def entropy_amax(abs_hist: np.ndarray, width: float, levels: int = ENTROPY_LEVELS, eps: float = SMOOTHING) -> float:
    """TensorRT's legacy entropy calibration: the range whose `levels`-level quantization of the clipped
    distribution has the least KL divergence from it (pytorch-quantization's `_compute_amax_entropy`).

    For each candidate of i >= `levels` bins: P is the first i bins with every count beyond added to the last;
    Q merges the i bins into `levels` levels (bin k in level floor(k * levels / i)) and spreads each level's
    count evenly over its non-empty bins. An empty last bin that receives clipped outliers gets `eps` counts in Q
    (MXNet's smoothing, which onnxruntime copies): pytorch-quantization's infinite divergence there sends
    sparse tails back to max. All candidates at once, by prefix sums over bins.
    """
    h = abs_hist.astype(np.float64)
    total = h.sum()
    prefix = lambda v: np.concatenate([[0.0], np.cumsum(v)])  # noqa: E731
    hlogh = np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0)
    mass_to, count_to, hlogh_to = prefix(h), prefix(h > 0), prefix(hlogh)
    i = np.arange(levels, len(h) + 1)  # candidates: bins kept
    bounds = -((-np.arange(levels + 1)[None, :] * i[:, None]) // levels)  # first bin of level j: ceil(j i / L)
    mass = mass_to[bounds[:, 1:]] - mass_to[bounds[:, :-1]]
    count = count_to[bounds[:, 1:]] - count_to[bounds[:, :-1]]
    avg = np.where(count > 0, mass / np.maximum(count, 1), 1.0)  # Q on each non-empty bin of a level
    mass_log_avg = (mass * np.log(avg)).sum(1)
    kept, last = mass_to[i], h[i - 1]
    body = kept - last  # bins 0..i-2: P and Q are non-empty on the same bins
    divergence = (hlogh_to[i - 1] - (mass_log_avg - last * np.log(avg[:, -1]))  # bin i-1 is in the last level
                  + body * (np.log(kept) - np.log(total))) / total
    p_last = (last + total - kept) / total
    q_last = np.where(last > 0, avg[:, -1], eps) / kept
    divergence += np.where(p_last > 0, p_last * np.log(np.where(p_last > 0, p_last, 1.0) / q_last), 0.0)
    best = len(divergence) - 1 - int(np.argmin(divergence[::-1]))  # the last minimum, as pytorch-quantization
    return float(i[best] * width)


def mse_amax(pos: np.ndarray, neg: np.ndarray, width: float, levels: float = 127.5) -> float:
    """The amax (a bin edge) with the least expected squared error of symmetric 8-bit quantization.

    Scale s = amax / levels; positives clip at 127 s and negatives at 128 s (int8 after the zero-point map).
    Per bin, at its center c: c**2 when c < s/2 (rounds to zero), s**2/12 inside the range (uniform rounding
    error, the usual assumption when a step spans several bins), (c - clip)**2 beyond it. Exact zeros are
    excluded by the caller. Prefix sums make each candidate O(log bins).
    """
    centers = (np.arange(len(pos)) + 0.5) * width
    candidates = np.arange(1, len(pos) + 1) * width
    steps = candidates / levels
    error = np.zeros_like(candidates)
    for hist, top in ((pos, np.floor(levels)), (neg, np.ceil(levels))):
        h0, h1, h2 = (np.concatenate([[0.0], np.cumsum(hist * centers ** k)]) for k in range(3))
        small = np.searchsorted(centers, steps / 2)  # bins rounding to zero
        clip = steps * top
        inside = np.searchsorted(centers, clip, side="right")
        beyond = (h2[-1] - h2[inside]) - 2 * clip * (h1[-1] - h1[inside]) + clip ** 2 * (h0[-1] - h0[inside])
        error += h2[small] + steps ** 2 / 12 * np.maximum(h0[inside] - h0[small], 0.0) + beyond
    return float(candidates[int(np.argmin(error))])


def set_method(prepared: torch.nn.Module, method: str, percentile: float = None) -> int:
    """Set every RangeObserver of a prepared model to `method` (and `percentile`), in place; return how many."""
    observers = [m for m in prepared.modules() if isinstance(m, RangeObserver)]
    for obs in observers:
        obs.method = check_method(method, obs.torch_histogram is not None)
        if percentile is not None:
            obs.percentile = check_percentile(percentile)
    return len(observers)


def ranges(prepared: torch.nn.Module, method: str = None) -> dict[str, float]:
    """Each RangeObserver's amax under `method` (default: its own), by module name; for reports and tests."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: m.amax(method) for name, m in prepared.named_modules()
                if isinstance(m, RangeObserver) and m.min_val.item() != float("inf")}


# --- calibrating once and choosing a method by held-out accuracy -------------------------------------------

# `auto`'s candidates by default: every method of the one histogram pass. PyTorch's HistogramObserver
# ("histogram") is the slowest observer (measured: bench/calibration.py), so it is a candidate only when asked.
AUTO_METHODS = ("minmax", "percentile", "entropy", "mse")


def calibrate(prepared: torch.nn.Module, batches: Iterable[torch.Tensor], desc: str = "calibrating") -> int:
    """Run `batches` (float NCHW) through a prepared model with a progress bar; return the images seen."""
    total = len(batches) if hasattr(batches, "__len__") else None
    seen = 0
    with torch.no_grad():
        for x in tqdm(batches, desc=desc, total=total, unit="batch", mininterval=2.0, leave=False, delay=2.0):
            prepared(*as_args(x))  # one input, or a multi-input model's tuple
            seen += rows(x)
    if not seen:
        raise PipelineError("no calibration batches were given; pass at least one batch of real inputs")
    return seen


def convert_copy(prepared: torch.nn.Module, method: Optional[str] = None,
                 percentile: Optional[float] = None) -> torch.nn.Module:
    """An INT8 copy of a calibrated model, its RangeObservers set to `method` first (the prepared model is kept)."""
    model = copy.deepcopy(prepared)
    if method is not None:
        set_method(model, method, percentile)
    with warnings.catch_warnings():
        # MobileNetV2's blocks without a residual never call their FloatFunctional; its unused observer's
        # "must run observer before calling calculate_qparams" is expected there.
        warnings.filterwarnings("ignore", message="must run observer before calling calculate_qparams")
        tq.convert(model, inplace=True)
    return model


def top1(model: torch.nn.Module, batches: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> float:
    """Top-1 accuracy of `model` on paired batches and labels (the project's one logits loop)."""
    from ..runtime.backends import PyTorchRunner, accuracy_of, logits

    return accuracy_of(logits(PyTorchRunner(model), batches, desc=False), torch.cat(list(labels)))


def choose_calibration(prepared: torch.nn.Module, holdout_batches: Sequence[torch.Tensor],
                       holdout_labels: Sequence[torch.Tensor], methods: Sequence[str] = AUTO_METHODS,
                       percentile: Optional[float] = None) -> tuple[str, dict, torch.nn.Module]:
    """Convert the calibrated model once per method and keep the one most accurate on held-out labelled images.

    `prepared` is calibrated with RangeObservers (quantize.prepare_for(..., "auto") then `calibrate`); the
    held-out images must come from the training set, disjoint from the calibration images, never the test set.
    Returns the method, {method: held-out top-1} and the chosen INT8 model. Ties go to the earlier method.
    """
    if not holdout_batches:
        raise PipelineError("automatic calibration chooses by accuracy on held-out images; pass holdout "
                            "batches and labels from the training set (not the test set)")
    table, best = {}, None
    for method in tqdm(methods, desc="choosing calibration", unit="method", leave=False):
        int8 = convert_copy(prepared, method, percentile)
        table[method] = top1(int8, holdout_batches, holdout_labels)
        if best is None or table[method] > table[best[0]]:
            best = (method, int8)
    return best[0], table, best[1]


def split_training(train: Split, calib_images: int, holdout_images: int = 0, seed: int = 0) -> tuple[Split, Split]:
    """Disjoint calibration and held-out subsets of the training split (a Split or an image folder's FolderSplit),
    from one fixed random permutation.

    A random subset, not the first images: the image-folder layout stores CIFAR-10 sorted by class, so its first
    2,560 images are all airplanes.
    """
    n = len(train)
    if calib_images + holdout_images > n:
        raise PipelineError(f"{calib_images} calibration and {holdout_images} held-out images need more than the "
                            f"{n} training images; ask for fewer")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(train.labels.device)
    return train.take(order[:calib_images]), train.take(order[calib_images:calib_images + holdout_images])
