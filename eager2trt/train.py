"""The reference training recipe in one tight loop over device-resident data (CPU or CUDA)."""

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from .artifacts import atomic_path
from .data import Split, epoch_batches, iterate_batches, normalize


@dataclass
class Recipe:
    """The reference recipe; every field is a command-line flag of resnet_torch.py."""

    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple = (100, 150)
    gamma: float = 0.1
    seed: int = 0
    fast: bool = True  # CUDA only: channels_last, bf16 autocast, fused SGD, torch.compile
    compile_mode: Optional[str] = "reduce-overhead"  # CUDA graphs: the fastest mode measured (bench/train_speed.py)


@dataclass
class History:
    epochs: list = field(default_factory=list)
    train_seconds: float = 0.0


def evaluate(model: torch.nn.Module, split: Split, batch_size: int = 1000, channels_last: bool = False) -> float:
    """Top-1 accuracy of `model` on `split` (model and data on the same device)."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in iterate_batches(split, batch_size):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            correct += (model(x).argmax(1) == y).sum()
    return int(correct) / len(split)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def _optimizer(model: torch.nn.Module, r: Recipe, fused: bool):
    opt = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay,
                          **({"fused": True} if fused else {}))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(r.milestones), gamma=r.gamma)
    return opt, sched


def _save_state(path: Path, model, opt, sched, gen, epoch: int, history: History, recipe: Recipe) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "generator": gen.get_state(), "epoch": epoch, "history": asdict(history),
                    "recipe": asdict(recipe)}, tmp)


def _try_resume(path: Optional[Path], model, opt, sched, gen, recipe: Recipe, history: History) -> int:
    """Resume from a training state written by the same recipe; return the epoch to start at."""
    if path is None or not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    if {**state["recipe"], "milestones": tuple(state["recipe"]["milestones"])} != asdict(recipe):
        print(f"ignoring {path}: it was written by a different recipe")
        return 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    history.epochs, history.train_seconds = state["history"]["epochs"], state["history"]["train_seconds"]
    print(f"resuming from {path} after epoch {state['epoch']}")
    return state["epoch"]


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
          save_every: int = 1) -> History:
    """Train `model` in place with SGD + MultiStepLR, testing after each epoch; resumable via `state_path`
    (written every `save_every` epochs and after the last)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fast = recipe.fast and device.type == "cuda"
    torch.manual_seed(recipe.seed)
    opt, sched = prepare(model, recipe, device)
    train_split, test_split = train_split.to(device), test_split.to(device)
    gen = torch.Generator(device=device).manual_seed(recipe.seed)
    history = History()
    start = _try_resume(state_path, model, opt, sched, gen, recipe, history)
    step = make_step(model, opt, recipe, device)
    steps = -(-len(train_split) // recipe.batch_size)
    bar = tqdm(range(start, recipe.epochs), desc="training", unit="epoch", initial=start, total=recipe.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        for x, y in epoch_batches(train_split, recipe.batch_size, gen):
            loss, batch_correct = step(x, y)
            # accumulate on the device: a .item() per step would synchronize and stall the GPU
            loss_sum += loss.detach() * len(y)
            correct += batch_correct
        lr = opt.param_groups[0]["lr"]  # the rate this epoch trained with, before the schedule steps
        sched.step()
        test_acc = evaluate(model, test_split, channels_last=fast)
        seconds = time.perf_counter() - t0
        history.train_seconds += seconds
        history.epochs.append({"epoch": epoch + 1, "loss": loss_sum.item() / len(train_split),
                               "train_acc": correct.item() / len(train_split), "test_acc": test_acc,
                               "lr": lr, "seconds": round(seconds, 3), "steps": steps})
        bar.set_postfix(loss=f"{history.epochs[-1]['loss']:.3f}", test_acc=f"{test_acc:.4f}")
        if state_path is not None and ((epoch + 1) % save_every == 0 or epoch + 1 == recipe.epochs):
            _save_state(state_path, model, opt, sched, gen, epoch + 1, history, recipe)
    model.to(memory_format=torch.contiguous_format)
    return history
