"""The reference training recipe in one tight loop over device-resident data (CPU or CUDA)."""

import hashlib
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from ..artifacts import save_torch
from . import distributed
from .data import Split, normalize
from ..errors import PipelineError

# Accuracy at or below chance (1/classes) plus this margin means the model learned nothing usable: an untrained
# or collapsed model predicts one class (exactly 0.10 on CIFAR-10's balanced test set), and chance accuracy on
# 10,000 test images has a standard deviation of 0.003, so 0.15 is 16 of them above chance. The brief 3-epoch
# CPU run of tests/test_integration.py reaches about 0.4.
CHANCE_MARGIN = 0.05
STATE_KEYS = {"model", "optimizer", "scheduler", "generator", "epoch", "history", "recipe", "data"}


@dataclass
class Recipe:
    """The reference recipe; every field but `gamma` (fixed at the reference's 0.1) is a resnet_torch.py flag."""

    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple = (100, 150)
    gamma: float = 0.1
    seed: int = 0
    train_subset: Optional[int] = None  # train on the first N images of a fixed permutation
    fast: bool = True  # CUDA only: channels_last, bf16 autocast, fused SGD, torch.compile
    compile_mode: Optional[str] = "reduce-overhead"  # CUDA graphs: the fastest mode measured (bench/train_speed.py)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device); call it before building the model, whose initial
    weights are drawn from torch's global generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class History:
    epochs: list = field(default_factory=list)
    train_seconds: float = 0.0


def evaluate(model: torch.nn.Module, split: Split, batch_size: int = 1000, channels_last: bool = False) -> float:
    """Top-1 accuracy of `model` on `split` (model and data on the same device), through the one evaluator."""
    from ..runtime.backends import PyTorchRunner, evaluate as evaluate_runner

    device = next(model.parameters()).device
    return evaluate_runner(PyTorchRunner(model, device, channels_last=channels_last), split, batch_size,
                           progress=False).accuracy


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def _optimizer(model: torch.nn.Module, r: Recipe, fused: bool):
    opt = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay,
                          **({"fused": True} if fused else {}))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(r.milestones), gamma=r.gamma)
    return opt, sched


def _data_fingerprint(split: Split) -> dict:
    """What identifies the training images of a run: their count and a digest of their labels."""
    labels = split.labels.cpu().numpy().tobytes()
    return {"train_images": len(split), "labels_sha1": hashlib.sha1(labels).hexdigest()[:16]}


def _save_state(path: Path, model, opt, sched, gen, epoch: int, history: History, recipe: Recipe,
                data: dict) -> None:
    save_torch({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "generator": gen.get_state(), "epoch": epoch, "history": asdict(history),
                "recipe": asdict(recipe), "data": data}, path)


def set_aside(path: Path) -> Path:
    """Rename a training state out of the way (kept, never deleted) and return its new name."""
    aside = path.with_name(f"{path.name}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while aside.exists():
        aside, n = aside.with_name(f"{path.name}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
    path.rename(aside)
    return aside


def _unusable(path: Path, why: str) -> PipelineError:
    return PipelineError(f"{path} is not a usable training state ({why}); pass --restart to move it aside "
                         f"(it is kept) and train from scratch")


def _read_state(path: Path) -> dict:
    """Load a training state, or raise one sentence when it is corrupt or not ours."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError... for damaged files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise _unusable(path, f"unreadable: {first[:120]}") from None
    missing = STATE_KEYS - set(state) if isinstance(state, dict) else STATE_KEYS
    if missing:
        raise _unusable(path, f"not written by eager2trt's training: missing {', '.join(sorted(missing))}")
    return state


def _differences(state: dict, recipe: Recipe, data: dict) -> list[str]:
    """The options (and data) that differ between a saved run and this one; --epochs may grow."""
    saved = {**state["recipe"], "milestones": tuple(state["recipe"].get("milestones", ()))}
    now = asdict(recipe)
    diffs = [f"--{k.replace('_', '-')} {saved.get(k)} there, {now[k]} now" for k in now
             if k != "epochs" and saved.get(k) != now[k]]
    if state["data"] != data and not diffs:  # same options, so --data-dir points at other images
        old = state["data"]
        diffs.append(f"other training images: {old.get('train_images')} with label digest {old.get('labels_sha1')} "
                     f"there, {data['train_images']} with {data['labels_sha1']} now (--data-dir)")
    if state["epoch"] > recipe.epochs:
        diffs.append(f"--epochs {recipe.epochs} now, fewer than the {state['epoch']} epochs already trained")
    return diffs


def _try_resume(path: Optional[Path], model, opt, sched, gen, recipe: Recipe, history: History, data: dict,
                restart: bool = False) -> int:
    """Resume from a training state written with the same options; return the epoch to start at."""
    if path is None or not path.exists():
        return 0
    if restart:
        print(f"--restart: moved {path} aside to {set_aside(path)}; training from scratch")
        return 0
    state = _read_state(path)
    diffs = _differences(state, recipe, data)
    if diffs:
        raise PipelineError(f"{path} holds an interrupted run with other options ({'; '.join(diffs)}); rerun with "
                            f"the same options to resume it, or pass --restart to move it aside and start over")
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        history.epochs, history.train_seconds = state["history"]["epochs"], state["history"]["train_seconds"]
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise _unusable(path, f"it does not fit this model: {str(exc).strip().splitlines()[0][:100]}") from None
    print(f"resuming from {path} after epoch {state['epoch']}")
    return state["epoch"]


def check_trained(model: torch.nn.Module, history: History, test_split: Split) -> None:
    """Raise one sentence when a trained model is not worth saving: non-finite weights, or chance accuracy."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise PipelineError(f"the trained weights are not finite ({len(bad)} tensors, first {bad[0]}); nothing was "
                            f"saved; lower --lr and rerun with --restart")
    if not history.epochs:
        return
    classes = int(test_split.labels.max()) + 1
    acc, bound = history.epochs[-1]["test_acc"], 1 / classes + CHANCE_MARGIN
    if acc <= bound:
        raise PipelineError(f"after {len(history.epochs)} epochs the test accuracy is {acc:.3f}, at chance level for "
                            f"{classes} classes (<= {bound:.2f}), so the model was not saved; train longer (a higher "
                            f"--epochs resumes this run) or check --lr and the data")


def make_step(model: torch.nn.Module, opt: torch.optim.Optimizer, recipe: Recipe, device: torch.device):
    """One SGD step on a batch (uint8 images are normalized inside); returns (loss, correct count).

    On CUDA with `recipe.fast`: channels_last, bf16 autocast and torch.compile over normalization, model,
    loss and accuracy, so one graph replaces dozens of small launches; the fused optimizer stays outside.
    """
    fast = recipe.fast and device.type == "cuda"
    loss_fn = torch.nn.CrossEntropyLoss()

    def forward_loss(x: torch.Tensor, y: torch.Tensor):
        if x.dtype == torch.uint8:
            x = normalize(x)
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, fast):
            out = model(x)
            loss = loss_fn(out, y)
        return loss, (out.argmax(1) == y).sum()

    forward = (torch.compile(forward_loss, mode=recipe.compile_mode, dynamic=False)
               if fast and recipe.compile_mode else forward_loss)

    def step(x: torch.Tensor, y: torch.Tensor):
        loss, correct = forward(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss, correct

    return step


def prepare(model: torch.nn.Module, recipe: Recipe, device: torch.device):
    """Move `model` to `device` (channels_last on the fast path) and build its optimizer and schedule."""
    fast = recipe.fast and device.type == "cuda"
    model.to(device)
    if fast:
        model.to(memory_format=torch.channels_last)
    return _optimizer(model, recipe, fused=fast)


def train(model: torch.nn.Module, train_split: Split, test_split: Split, recipe: Recipe,
          state_path: Optional[Path] = None, device: Optional[torch.device] = None,
          save_every: int = 1, restart: bool = False) -> History:
    """Train `model` in place with SGD + MultiStepLR, testing after each epoch; resumable via `state_path`
    (written every `save_every` epochs and after the last; `restart` moves an existing one aside).

    Raises as soon as an epoch's loss is not finite, before that epoch's state is saved.
    """
    device = device or distributed.device()  # one process: CUDA when available, else CPU
    fast = recipe.fast and device.type == "cuda"
    torch.manual_seed(recipe.seed)
    opt, sched = prepare(model, recipe, device)
    train_split = train_split.subset(recipe.train_subset)
    data = _data_fingerprint(train_split)
    train_split, test_split = train_split.to(device), test_split.to(device)
    gen = torch.Generator(device=device).manual_seed(recipe.seed)
    history = History()
    start = _try_resume(state_path, model, opt, sched, gen, recipe, history, data, restart)
    step = make_step(distributed.wrap(model), opt, recipe, device)  # DDP under torchrun, else the model
    steps = -(-len(train_split) // recipe.batch_size)
    bar = tqdm(range(start, recipe.epochs), desc="training", unit="epoch", initial=start, total=recipe.epochs,
               disable=not distributed.is_main())
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        # every rank draws the same permutation (same seed) and takes every N-th batch: DistributedSampler's split
        for x, y in distributed.shard(train_split.epoch(recipe.batch_size, gen), equal=True):
            loss, batch_correct = step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
            # accumulate on the device: a .item() per step would synchronize and stall the GPU
            loss_sum += loss.detach() * len(y)
            correct += batch_correct
            seen += len(y)
        loss_sum, correct, seen = distributed.all_sum(loss_sum, correct, seen)  # one process: unchanged
        lr = opt.param_groups[0]["lr"]  # the rate this epoch trained with, before the schedule steps
        loss = loss_sum.item() / seen
        if not math.isfinite(loss):  # checked before the test pass and before this epoch's state is saved
            raise PipelineError(f"training diverged in epoch {epoch + 1} (loss {loss}); nothing was saved; lower "
                                f"--lr (now {recipe.lr:g}) and rerun with --restart")
        sched.step()
        test_acc = evaluate(model, test_split, channels_last=fast)
        seconds = time.perf_counter() - t0
        history.train_seconds += seconds
        history.epochs.append({"epoch": epoch + 1, "loss": loss,
                               "train_acc": correct.item() / seen, "test_acc": test_acc,
                               "lr": lr, "seconds": round(seconds, 3), "steps": steps})
        e = history.epochs[-1]
        bar.set_postfix(loss=f"{e['loss']:.3f}", test_acc=f"{test_acc:.4f}")
        if not distributed.is_main():  # under torchrun every rank holds the same figures; rank 0 logs and saves
            continue
        tqdm.write(f"epoch {e['epoch']}/{recipe.epochs}: loss {e['loss']:.6f}, train accuracy {e['train_acc']:.4f}, "
                   f"test accuracy {test_acc:.4f}, lr {lr:g}")
        if state_path is not None and ((epoch + 1) % save_every == 0 or epoch + 1 == recipe.epochs):
            _save_state(state_path, model, opt, sched, gen, epoch + 1, history, recipe, data)
    model.to(memory_format=torch.contiguous_format)
    return history
