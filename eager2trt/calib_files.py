"""Calibration (and evaluation) data from files, in the conventions other tools use.

- An array file (NVIDIA ModelOpt's `--calibration_data`): X.npy holding float32 NCHW samples stacked on dim 0, or
  X.npz holding that array under the model's input name (contract.INPUT_NAME, "input").
- A data loader script (Polygraphy's `--data-loader-script`): S.py[:func], `func` (default load_data) returns or
  yields feed dicts {input_name: array}, bare arrays, or (feed, labels) pairs; with labels (an int array of class
  indices, one per sample) the batches are evaluated on as well.

Every sample must already be what the model takes: float32, normalized (mean/std applied), NCHW with the model's
channels and image size. A bad file is one sentence naming the file, the problem and the fix.
"""

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .contract import INPUT_NAME
from .errors import PipelineError
from .inputs import check_finite_normalized

DEFAULT_LOADER = "load_data"  # Polygraphy's default function name


@dataclass
class FileData:
    """Batches (float32 NCHW torch tensors) from a file, their labels when it gave them, and where they came from."""

    batches: list
    labels: Optional[torch.Tensor]
    source: str


class LabelledBatches:
    """Batches given whole with their labels (a data loader script's), as runtime.backends.evaluate takes them."""

    def __init__(self, batches: list, labels):
        self.batches_, self.labels = batches, labels

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int):
        ends = list(itertools.accumulate(len(b) for b in self.batches_))
        return ((b, self.labels[end - len(b):end]) for b, end in zip(self.batches_, ends))



def check_samples(x, source: str, chw: Optional[tuple] = None) -> np.ndarray:
    """`x` as float32 NCHW, finite and normalized, with image shape `chw` when given; else one sentence naming
    `source` and the fix."""
    x = np.asarray(x)
    if x.dtype == np.uint8 or (x.dtype.kind in "iu"):
        raise PipelineError(f"{source} holds {x.dtype} values (raw pixels?); save float32 images normalized with the "
                            f"model's mean and std ((x / 255 - mean) / std)")
    if x.dtype.kind != "f":
        raise PipelineError(f"{source} holds {x.dtype} values; save float32 NCHW images")
    if x.ndim != 4:
        raise PipelineError(f"{source} has shape {x.shape}, rank {x.ndim}; save samples stacked on dim 0 as NCHW "
                            f"(N, channels, height, width), e.g. np.stack(images)")
    if chw is not None and tuple(x.shape[1:]) != tuple(chw):
        raise PipelineError(f"{source} has samples of shape {tuple(x.shape[1:])} (CHW) but the model takes "
                            f"{tuple(chw)}; save images with {chw[0]} channels at {chw[1]}x{chw[2]} (NCHW, not NHWC)")
    if x.shape[0] == 0:
        raise PipelineError(f"{source} holds no samples (shape {x.shape}); save at least one image")
    check_finite_normalized(x, source, "save finite images", "so it is not normalized (0..255 pixels?); save "
                            "images normalized with the model's mean and std ((x / 255 - mean) / std)")
    return np.ascontiguousarray(x, dtype=np.float32)


def check_calibration_paths(calib_data: Optional[Path] = None, script: Optional[str] = None) -> None:
    """Raise before any work when the calibration file or the data loader script is missing or of the wrong kind."""
    if calib_data is not None and Path(calib_data).suffix not in (".npy", ".npz"):
        raise PipelineError(f"calibration data {calib_data} is neither .npy nor .npz; save the samples with np.save "
                            f"(X.npy) or np.savez(X.npz, {INPUT_NAME}=x)")
    if calib_data is not None and not Path(calib_data).is_file():
        raise PipelineError(f"calibration data {calib_data} does not exist; pass an existing .npy or .npz file")
    if script is not None:
        path = Path(str(script).partition(":")[0])
        if path.suffix != ".py" or not path.is_file():
            raise PipelineError(f"data loader script {path} is not an existing .py file; pass path/script.py or "
                                f"path/script.py:function")


def load_array_file(path: Path, input_name: str = INPUT_NAME, chw: Optional[tuple] = None) -> np.ndarray:
    """Samples from X.npy, or X.npz keyed by `input_name`, checked with check_samples."""
    path = Path(path)
    check_calibration_paths(calib_data=path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if path.suffix == ".npz":
            with loaded:
                keys = list(loaded.keys())
                if input_name not in keys:
                    raise PipelineError(f"calibration data {path} has no array named {input_name!r} (keys: "
                                        f"{', '.join(keys) or 'none'}); save it under the model's input name: "
                                        f"np.savez({path.name}, {input_name}=x)")
                loaded = loaded[input_name]
    except PipelineError:
        raise
    except Exception as exc:  # a damaged or pickled file: ValueError, BadZipFile, EOFError, OSError...
        raise PipelineError(f"calibration data {path} is not a readable NumPy file ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:100] if str(exc) else ''}); save it again with np.save or "
                            f"np.savez") from None
    return check_samples(loaded, f"calibration data {path}", chw)


def array_batches(x: np.ndarray, batch_size: int) -> list:
    """Torch batches of `batch_size` samples (the last may be partial)."""
    t = torch.from_numpy(x)
    return list(t.split(batch_size))


def _load_function(spec: str):
    """The function `spec` = path/script.py[:func] names (func defaults to load_data)."""
    import importlib.util

    script, _, func = str(spec).partition(":")
    func = func or DEFAULT_LOADER
    path = Path(script)
    check_calibration_paths(script=spec)
    try:
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except Exception as exc:  # any error in the user's script
        raise PipelineError(f"data loader script {script} failed to load ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); fix the script") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise PipelineError(f"data loader script {script} has no function {func}; define {func}() returning or "
                            f"yielding feed dicts {{'{INPUT_NAME}': array}}, or pass {script}:<function>")
    return fn


def _split_item(item, source: str, input_name: str):
    """(array, labels or None) from one item the loader gave: a feed dict, an array, or a (feed, labels) pair."""
    labels = None
    if isinstance(item, tuple) and len(item) == 2:
        item, labels = item
    if isinstance(item, dict):
        if input_name not in item:
            raise PipelineError(f"{source} gave a feed dict with keys {', '.join(map(str, item)) or 'none'}, not the "
                                f"model's input {input_name!r}; yield {{'{input_name}': array}}")
        item = item[input_name]
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    return item, labels


def _check_labels(labels, n: int, source: str) -> torch.Tensor:
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if y.dtype.kind not in "iu" or y.shape != (n,):
        raise PipelineError(f"{source} gave labels of shape {y.shape} and type {y.dtype} for {n} samples; give one "
                            f"integer class index per sample, e.g. (feed, np.array([3, 0, ...]))")
    return torch.as_tensor(y, dtype=torch.int64)


def load_script_data(spec: str, input_name: str = INPUT_NAME, chw: Optional[tuple] = None) -> FileData:
    """Every batch the data loader script `spec` gives, checked; labels when every item came with them."""
    fn = _load_function(spec)
    source = f"data loader script {spec}"
    try:
        items = fn()
        items = [items] if isinstance(items, (dict, np.ndarray, torch.Tensor)) else list(items)
    except PipelineError:
        raise
    except Exception as exc:  # the user's function failed
        raise PipelineError(f"{source} raised {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
                            f"; fix the function") from None
    if not items:
        raise PipelineError(f"{source} gave no batches; return or yield at least one feed dict "
                            f"{{'{input_name}': array}}")
    batches, labels = [], []
    for i, item in enumerate(items):
        x, y = _split_item(item, f"{source} (item {i})", input_name)
        x = check_samples(x, f"{source} (item {i})", chw)
        chw = chw or tuple(x.shape[1:])
        batches.append(torch.from_numpy(x))
        labels.append(None if y is None else _check_labels(y, len(x), f"{source} (item {i})"))
    given = [y is not None for y in labels]
    if any(given) and not all(given):
        raise PipelineError(f"{source} gave labels with some batches only; give (feed, labels) for every batch, or "
                            f"for none")
    return FileData(batches, torch.cat(labels) if all(given) else None, source)
