import pytest
import torch

import eager2trt.train as train_mod
from eager2trt.data import Split
from eager2trt.model import build_model
from eager2trt.train import Recipe, train

CPU = torch.device("cpu")


def learnable_split(n=64, seed=0):
    """Images whose brightness encodes the label: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = (labels.view(n, 1, 1, 1) * 25 + torch.randint(0, 10, (n, 3, 32, 32), generator=g)).to(torch.uint8)
    return Split(images, labels)


def test_training_learns_a_learnable_task():
    data = learnable_split()
    h = train(build_model(), data, data, Recipe(epochs=6, batch_size=16, lr=0.02, milestones=(100,)), device=CPU)
    assert [e["epoch"] for e in h.epochs] == list(range(1, 7))
    assert min(e["loss"] for e in h.epochs[-2:]) < h.epochs[0]["loss"]


def test_interrupted_run_resumes_from_its_last_epoch(tmp_path, monkeypatch, capsys):
    data = learnable_split()
    state = tmp_path / "state.pt"
    recipe = Recipe(epochs=2, batch_size=32, milestones=(1,))
    real_evaluate, calls = train_mod.evaluate, []

    def interrupt_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", interrupt_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(build_model(), data, data, recipe, state_path=state, device=CPU)
    saved = torch.load(state, weights_only=False)
    assert saved["epoch"] == 1 and saved["scheduler"]["last_epoch"] == 1
    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)
    resumed = train(build_model(), data, data, recipe, state_path=state, device=CPU)
    assert "resuming" in capsys.readouterr().out
    assert [e["epoch"] for e in resumed.epochs] == [1, 2]
    assert resumed.epochs[0] == saved["history"]["epochs"][0]
    assert resumed.epochs[1]["lr"] == pytest.approx(0.01)  # the schedule continued past its milestone
    other = train(build_model(), data, data, Recipe(epochs=1, batch_size=32), state_path=state, device=CPU)
    assert "different recipe" in capsys.readouterr().out and len(other.epochs) == 1
