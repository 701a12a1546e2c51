"""The sensitivity report as files (JSON, a markdown table, a bar chart) and the one call behind the CLI."""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import onnx

from ..artifacts import atomic_path, save_onnx, write_json
from ..errors import PipelineError
from ..graph.fallback import FallbackResult, fallback
from ..graph.sensitivity import SensitivityReport, analyze, random_inputs, study

SENSITIVITY_JSON = "sensitivity.json"
SENSITIVITY_MD = "sensitivity.md"
SENSITIVITY_PNG = "sensitivity.png"
SPLITS = ("train", "test")
PLOT_LAYERS = 30  # the chart shows the most sensitive ones; the JSON and the table hold all


def held_out(split, images: int, seed: int = 0):
    """The last `images` of a fixed random permutation of `split` (seed 0): disjoint from Split.subset(n) for
    n <= len - images, and balanced over classes even when the split is stored class by class. `split`: anything
    with take(indices) and len() (a CIFAR-10 Split, an image folder's FolderSplit)."""
    import torch

    n = min(images, len(split))
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[len(split) - n:]
    return split.take(idx)


def labelled_batches(data, split: str, images: int, batch_size: int,
                     source: str = "") -> tuple[list, np.ndarray, str]:
    """Normalized float32 batches and labels of a held-out slice of `data` (the `split` split, named so in the
    description, of `source`), and what they are, in words."""
    part = held_out(data, images)
    batches = [x.numpy() for x, _ in part.batches(batch_size)]
    where = ("held out from calibration, which reads the first training batches; the model may have trained on them"
             if split == "train" else "a slice of the test set: a fallback chosen on it is unbiased only on the "
                                      "other test images")
    return batches, part.labels.numpy(), (f"{len(part)} {split} images of {source or 'the data'}: the last "
                                          f"{len(part)} of a fixed random permutation (seed 0), {where}")


# ---------------------------------------------------------------- files

def markdown(report: SensitivityReport) -> str:
    """The ranked table, with the three graphs it is relative to."""
    def fmt(m):
        return "" if m is None else f"{100 * m.score:.2f}"

    lines = [f"# INT8 sensitivity ({report.metric})", "",
             f"Data: {report.data or 'not recorded'}.  ",
             f"Reference: {report.reference_name}, {100 * report.reference.score:.2f}; INT8 graph "
             f"{100 * report.int8.score:.2f} (mean abs logit error {report.int8.error:.4g}); every layer in float "
             f"{100 * report.all_float.score:.2f}.  ",
             f"Float weights: {report.weights_source}.  ",
             f"{report.evaluations} evaluations in {report.seconds:.1f} s.", "",
             "| rank | layer | kind | op | alone in float | points recovered | logit error | alone quantized "
             "| points lost | logit error |",
             "|---:|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for u in report.layers:
        q = u.quantized_alone
        lines.append(f"| {u.rank} | `{u.name}` | {u.kind} | {u.op} | {fmt(u.float_alone)} | {u.gain:+.2f} | "
                     f"{u.float_alone.error:.4g} | {fmt(q)} | {'' if u.loss is None else f'{u.loss:+.2f}'} | "
                     f"{'' if q is None else f'{q.error:.4g}'} |")
    return "\n".join(lines) + "\n"


def plot(report: SensitivityReport, path: Path, layers: int = PLOT_LAYERS) -> Path:
    """Horizontal bars for the most sensitive layers: points recovered alone in float, points lost alone
    quantized, and the logit error removed alone in float."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = report.layers[:layers][::-1]  # most sensitive at the top
    y = np.arange(len(top))
    names = [f"{u.rank}. {u.kind[0]} {u.name[-38:]}" for u in top]
    fig, (ax, ex) = plt.subplots(1, 2, figsize=(12, 1.5 + 0.28 * len(top)), sharey=True)
    ax.barh(y + 0.2, [u.gain for u in top], height=0.4, color="tab:blue", label="recovered, alone in float")
    ax.barh(y - 0.2, [u.loss or 0.0 for u in top], height=0.4, color="tab:red", label="lost, alone quantized")
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xlabel(f"points ({report.metric})")
    ax.axvline(0, color="grey", lw=0.6)
    ax.legend(fontsize=7, loc="lower right")
    ex.barh(y, [report.int8.error - u.float_alone.error for u in top], color="tab:green")
    ex.set_xlabel(f"logit error removed, alone in float (INT8: {report.int8.error:.3g})")
    fig.suptitle(f"INT8 sensitivity: reference {100 * report.reference.score:.2f}, INT8 {100 * report.int8.score:.2f}"
                 f" ({report.reference_name})", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def write(report: SensitivityReport, output_dir: Path, fb: Optional[FallbackResult] = None) -> dict[str, Path]:
    """sensitivity.json (metrics.json's layout: one section), sensitivity.md and sensitivity.png."""
    output_dir = Path(output_dir)
    paths = {"json": output_dir / SENSITIVITY_JSON, "markdown": output_dir / SENSITIVITY_MD,
             "plot": output_dir / SENSITIVITY_PNG}
    record = {"sensitivity": report.as_dict()}
    if fb is not None:
        record["fallback"] = fb.as_dict()
    write_json(paths["json"], record)
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(markdown(report))
    plot(report, paths["plot"])
    return paths


# ---------------------------------------------------------------- the one call

@dataclass
class SensitivityRun:
    report: SensitivityReport
    files: dict
    fallback: Optional[FallbackResult] = None
    seconds: float = 0.0


def sensitivity_report(model: onnx.ModelProto, output_dir: Path, fp32: Optional[onnx.ModelProto] = None,
                       data=None, split: str = "test", images: int = 1000, data_source: str = "",
                       input_shape: Optional[tuple] = None, batch_size: int = 250, threads: int = 0,
                       budget: Optional[float] = None, fallback_path: Optional[Path] = None,
                       progress: bool = True) -> SensitivityRun:
    """Rank `model`'s layers on `images` held-out images of `data` (labelled: accuracy; the `split` split of
    `data_source`, a CIFAR-10 Split or an image folder's FolderSplit) or random inputs of CHW `input_shape`
    (agreement and logit error); write the report to `output_dir`; with
    `fallback_path`, search the fewest float layers within `budget` points and write that graph there."""
    t0 = time.perf_counter()
    if data is not None:
        batches, labels, described = labelled_batches(data, split, images, batch_size, data_source)
    else:
        if input_shape is None:
            raise PipelineError("input_shape is needed for random inputs when no data is given")
        batches, labels = random_inputs(images, tuple(input_shape), batch_size), None
        described = f"{images} random standard-normal inputs of shape {list(input_shape)} (seed 0), no labels"
    # the fallback graph carries the FP32 biases (as TensorRT reads a float bias), so its ranking is measured so
    s = study(model, batches, labels, fp32, threads, float_from=fp32 if fallback_path is not None else None)
    report = analyze(s, progress=progress, data=described)
    fb = None
    if fallback_path is not None:
        fb = fallback(s, report, 1.0 if budget is None else budget, progress=progress)
        if fb.reached:  # a graph outside the budget is not written: the check below names why
            save_onnx(fb.model, fallback_path)
    files = write(report, output_dir, fb)
    return SensitivityRun(report, files, fb, round(time.perf_counter() - t0, 3))


def print_run(run: SensitivityRun, top: int = 10) -> None:
    """The summary people read: data, reference, the top layers, the fallback and the files."""
    r = run.report
    print(f"data: {r.data}")
    print(f"metric: {r.metric}; float weights: {r.weights_source}")
    biases = f" with its {r.extra['float_biases']} unrounded float biases" if r.extra.get("float_biases") else ""
    print(f"reference ({r.reference_name}) {100 * r.reference.score:.2f}, INT8 graph{biases} {100 * r.int8.score:.2f} "
          f"(mean abs logit error {r.int8.error:.4g}), every layer in float {100 * r.all_float.score:.2f}")
    print(f"{'rank':>4}  {'points recovered alone in float':>31}  {'points lost alone quantized':>27}  layer")
    for u in r.layers[:top]:
        lost = "" if u.loss is None else f"{u.loss:+.2f}"
        print(f"{u.rank:>4}  {u.gain:>+31.2f}  {lost:>27}  {u.label} ({u.op})")
    if run.fallback is not None:
        fb = run.fallback
        print(f"fallback: {len(fb.kept)} layers kept in float ({', '.join(fb.kept) or 'none'}): "
              f"{100 * fb.measurement.score:.2f} vs reference {100 * fb.reference_score:.2f}, "
              f"budget {fb.budget:g} points, "
              f"{'reached' if fb.reached else 'NOT reached'}")
        e = fb.extra_layers
        print(f"  predicted extra TensorRT layers: {e['reformat_layers']} reformat (unfused Q/DQ), "
              f"{e['float_compute_layers']} Conv/Gemm in float instead of INT8")
        print(f"  held to: {fb.held_to}")
    for kind, path in run.files.items():
        print(f"wrote {path}")
    print(f"{r.evaluations} evaluations of {r.images} images, {run.seconds:.1f} s in all")
