"""Running statistics of models' outputs on the same inputs, batch by batch: what every check reads, in constant
memory (no output array is kept, so 50,000 ImageNet images cost what 1,000 do).

Stats compares a candidate's output with a reference's (one output of each): sums of squares and absolute values,
the maximum difference and argmax agreement (over the class or channel dimension, per pixel for segmentation
maps). Score holds one model's labelled figures: top-1 (per pixel when the labels are maps), the confusion matrix
for mIoU on label maps, and a user metric. Tally holds both for a run, keyed by model names and outputs.
"""

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import PipelineError


def _argmax(x: np.ndarray) -> np.ndarray:
    return x.argmax(1) if x.ndim >= 2 else np.zeros(len(x), np.int64)


@dataclass
class Stats:
    """One output of `candidate` against the same output of `reference`, on the same samples."""

    samples: int = 0
    values: int = 0
    positions: int = 0  # argmax positions: samples x spatial positions
    same_argmax: int = 0
    sq_diff: float = 0.0
    sq_reference: float = 0.0
    abs_diff: float = 0.0
    max_abs: float = 0.0

    def add(self, candidate: np.ndarray, reference: np.ndarray) -> "Stats":
        c, r = np.asarray(candidate, np.float64), np.asarray(reference, np.float64)
        if c.shape != r.shape:
            raise PipelineError(f"two computations of one model give outputs of shapes {c.shape[1:]} and "
                                f"{r.shape[1:]}: the graph comes from a different model; re-export it from this one")
        d = c - r
        self.samples += len(c)
        self.values += d.size
        agree = _argmax(c) == _argmax(r)
        self.positions += agree.size
        self.same_argmax += int(agree.sum())
        self.sq_diff += float((d * d).sum())
        self.sq_reference += float((r * r).sum())
        self.abs_diff += float(np.abs(d).sum())
        largest = float(np.abs(d).max()) if d.size else 0.0
        self.max_abs = math.inf if math.isnan(largest) else max(self.max_abs, largest)  # NaN must not pass a bound
        return self

    @classmethod
    def of(cls, candidate: np.ndarray, reference: np.ndarray) -> "Stats":
        return cls().add(candidate, reference)

    def merged(self, other: "Stats") -> "Stats":
        """Both sets of samples together (e.g. random and real inputs)."""
        return Stats(self.samples + other.samples, self.values + other.values, self.positions + other.positions,
                     self.same_argmax + other.same_argmax, self.sq_diff + other.sq_diff,
                     self.sq_reference + other.sq_reference, self.abs_diff + other.abs_diff,
                     max(self.max_abs, other.max_abs))

    @property
    def distance(self) -> float:
        """||candidate - reference|| over every value (Frobenius norm)."""
        return math.sqrt(self.sq_diff)

    @property
    def relative(self) -> float:
        """||candidate - reference|| / ||reference||."""
        return self.distance / max(math.sqrt(self.sq_reference), 1e-12)

    @property
    def mean_abs(self) -> float:
        return self.abs_diff / max(self.values, 1)

    @property
    def agreement(self) -> float:
        """The fraction of samples (positions, for maps) on which both pick the same class."""
        return self.same_argmax / max(self.positions, 1)


def _metric(metric: Callable, outputs: list, labels) -> float:
    """The user's metric on one batch, as a float; its failure told in one sentence."""
    name = getattr(metric, "__name__", type(metric).__name__)
    try:
        value = float(metric([torch.from_numpy(np.asarray(o)) for o in outputs], labels))
    except Exception as exc:  # the user's code: any exception type
        raise PipelineError(f"metric {name}(outputs, labels) fails on a batch ({type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ''}); it takes a list of "
                            f"output tensors and the batch's labels and returns a float") from None
    if not math.isfinite(value):
        raise PipelineError(f"metric {name}(outputs, labels) returned {value}; return a finite float, higher is better")
    return value


def _numeric(labels) -> Optional[np.ndarray]:
    """Labels as a numeric array, None when they are not numbers (a metric's targets: dicts, strings)."""
    try:
        y = np.asarray(torch.as_tensor(labels).cpu() if not isinstance(labels, np.ndarray) else labels)
    except (TypeError, ValueError, RuntimeError):
        return None
    return y if y.dtype.kind in "biuf" else None


def _integral(y: np.ndarray) -> bool:
    return y.dtype.kind in "biu" or bool(np.all(np.mod(y, 1) == 0))


def _class_indices(y: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Labels checked against the first output: one integer class per sample (N,) for (N, C) logits, or one label
    map per sample (N, H, W) for (N, C, H, W) maps."""
    if out.ndim < 2:
        raise PipelineError(f"the first output has shape {out.shape}, no class dimension to score labels on; pass "
                            f"metric= to score it")
    want = _argmax(out).shape
    if y.shape != want:
        raise PipelineError(f"the labels have shape {y.shape} for a first output of shape {out.shape}; pass one class "
                            f"index per sample, shape {want[:1]} (one-hot: y.argmax(1))"
                            + (f", or one label map per sample, shape {want}" if len(want) > 1 else "")
                            + ", or metric= to score other targets")
    if not _integral(y):
        raise PipelineError(f"the labels hold non-integer values (e.g. {y[np.mod(y, 1) != 0].flat[0]:g}); pass "
                            f"integer class indices")
    return y.astype(np.int64)


@dataclass
class Score:
    """One model's figures against labels: top-1 of the labelled output (per pixel when labels are maps), mIoU over
    the confusion matrix for label maps (labels outside 0..C-1, e.g. 255, are ignored), and the mean of a user
    `metric(outputs, labels)` weighted by samples."""

    correct: int = 0
    counted: int = 0
    classes: int = 0
    confusion: Optional[np.ndarray] = None
    metric_sum: float = 0.0
    metric_samples: int = 0

    def add(self, outputs: list, labels, metric: Optional[Callable] = None) -> None:
        """One batch. With `metric` the labels go to it as given (any targets) and top-1 is counted only where they
        are class indices or maps of the first output's shape; without, they must be (one sentence otherwise)."""
        out = np.asarray(outputs[0])
        if metric is not None:
            n = len(out)
            self.metric_sum += _metric(metric, outputs, labels) * n
            self.metric_samples += n
            y = _numeric(labels)
            if y is not None and out.ndim >= 2 and y.shape == _argmax(out).shape and _integral(y):
                self._add_top1(out, y.astype(np.int64), strict=False)
            return
        y = _numeric(labels)
        if y is None:
            raise PipelineError(f"the labels are {type(labels).__name__}, not numbers; pass integer class indices (or "
                                f"label maps), or pass metric= to score other targets")
        self._add_top1(out, _class_indices(y, out), strict=True)

    def _add_top1(self, out: np.ndarray, y: np.ndarray, strict: bool) -> None:
        pred, classes = _argmax(out), out.shape[1]
        self.classes = classes
        if y.ndim >= 2:  # label maps: count valid pixels only (255 and the like are ignored)
            valid = (y >= 0) & (y < classes)
            self.correct += int((pred[valid] == y[valid]).sum())
            self.counted += int(valid.sum())
            cm = np.bincount(y[valid] * classes + pred[valid], minlength=classes * classes).reshape(classes, classes)
            self.confusion = cm if self.confusion is None else self.confusion + cm
            return
        outside = y[(y < 0) | (y >= classes)]
        if len(outside) and strict:
            raise PipelineError(f"the labels hold {int(outside[0])}, outside the {classes} classes of the first output "
                                f"(0..{classes - 1}); pass labels numbered from 0")
        self.correct += int((pred == y).sum())
        self.counted += len(y)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.counted, 1)

    @property
    def miou(self) -> Optional[float]:
        if self.confusion is None:
            return None
        inter = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - inter
        present = union > 0
        return float((inter[present] / union[present]).mean()) if present.any() else None

    @property
    def metric(self) -> Optional[float]:
        return self.metric_sum / self.metric_samples if self.metric_samples else None

    def value(self) -> float:
        """The figure guards hold: the user metric when given, else top-1."""
        if self.metric is not None:
            return self.metric
        if not self.counted:
            raise PipelineError(f"the label maps hold no pixel in 0..{self.classes - 1} (every pixel is ignored, e.g. "
                                f"255); check the label maps")
        return self.accuracy

    def figures(self) -> dict:
        return {"top1": self.accuracy, "counted": self.counted, "miou": self.miou, "metric": self.metric}


@dataclass
class Tally:
    """A run's statistics: stats[(candidate, reference)][output index] and scores[model], plus the output names and
    the number of samples seen."""

    output_names: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    samples: int = 0
    sample: Optional["Tally"] = None  # the first batches, every model on them (run_together's `sampled` runners)
    seconds: dict = field(default_factory=dict)  # model -> seconds its runner took (outputs back on the CPU)
    seen: dict = field(default_factory=dict)  # model -> samples it ran on

    def throughput(self) -> dict:
        """Samples per second of each model's runner, and how many samples it ran on."""
        return {k: {"samples": self.seen[k], "seconds": v, "samples_per_second": self.seen[k] / v if v else None}
                for k, v in self.seconds.items()}

    @property
    def same_samples(self) -> "Tally":
        """The tally in which every model saw the same samples: the sample where some models ran on it only."""
        return self.sample if self.sample is not None else self

    def pair(self, candidate: str, reference: str) -> list[Stats]:
        return self.stats[(candidate, reference)]

    def add(self, outputs: dict, pairs: list, labels=None, metric: Optional[Callable] = None) -> None:
        """One batch: `outputs` = model name -> list of output arrays (same inputs)."""
        for cand, ref in pairs:
            if cand in outputs and ref in outputs:
                per = self.stats.setdefault((cand, ref), [Stats() for _ in outputs[ref]])
                if len(outputs[cand]) != len(per):
                    raise PipelineError(f"the {cand} model gives {len(outputs[cand])} outputs, the {ref} model "
                                        f"{len(per)}: they are different models; re-export from this one")
                for s, c, r in zip(per, outputs[cand], outputs[ref]):
                    s.add(c, r)
        if labels is not None:
            for name, outs in outputs.items():
                self.scores.setdefault(name, Score()).add(outs, labels, metric)
        self.samples += len(next(iter(outputs.values()))[0])

    def merged(self, other: "Tally") -> "Tally":
        """Two input sets' statistics together (scores are the first's: labels are on real images only)."""
        stats = {k: [a.merged(b) for a, b in zip(v, other.stats[k])] if k in other.stats else v
                 for k, v in self.stats.items()}
        return Tally(self.output_names, stats, self.scores or other.scores, self.samples + other.samples,
                     self.sample.merged(other.same_samples) if self.sample is not None else None)
