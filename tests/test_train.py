import pytest
import torch

import eager2trt.eager.train as train_mod
from eager2trt.eager.data import Split
from eager2trt.errors import PipelineError
from eager2trt.eager.model import build_model
from eager2trt.eager.train import Recipe, check_trained, seed_everything, train

CPU = torch.device("cpu")


def learnable_split(n=64, seed=0):
    """Images whose brightness encodes the label: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = (labels.view(n, 1, 1, 1) * 25 + torch.randint(0, 10, (n, 3, 32, 32), generator=g)).to(torch.uint8)
    return Split(images, labels)


def constant_split(per_class=2):
    """Identical images with balanced labels: any model predicts one class, so accuracy is exactly 1/10."""
    labels = torch.arange(10).repeat_interleave(per_class)
    return Split(torch.full((len(labels), 3, 32, 32), 128, dtype=torch.uint8), labels)


def test_training_learns_a_learnable_task():
    data = learnable_split()
    h = train(build_model(), data, data, Recipe(epochs=6, batch_size=16, lr=0.02, milestones=(100,)), device=CPU)
    assert [e["epoch"] for e in h.epochs] == list(range(1, 7))
    assert min(e["loss"] for e in h.epochs[-2:]) < h.epochs[0]["loss"]


def test_seeded_runs_are_identical_on_the_cpu():
    data = learnable_split(16)
    runs = []
    for _ in range(2):
        seed_everything(3)  # before build_model, as resnet_torch.py does: the initial weights depend on it
        model = build_model()
        history = train(model, data, data, Recipe(epochs=2, batch_size=8, lr=0.02, seed=3), device=CPU)
        runs.append(([e["loss"] for e in history.epochs], model.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    seed_everything(4)
    other = train(build_model(), data, data, Recipe(epochs=1, batch_size=8, lr=0.02, seed=4), device=CPU)
    assert other.epochs[0]["loss"] != runs[0][0][0]  # the seed matters, so the equality above means something


def interrupt_in_epoch(monkeypatch, n):
    """Raise KeyboardInterrupt in the test pass of epoch `n`, after epoch n-1's state was saved."""
    real_evaluate, calls = train_mod.evaluate, []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    return real_evaluate


def test_interrupted_run_resumes_from_its_last_epoch(tmp_path, monkeypatch, capsys):
    data = learnable_split()
    state = tmp_path / "state.pt"
    recipe = Recipe(epochs=2, batch_size=32, milestones=(1,))
    real_evaluate = interrupt_in_epoch(monkeypatch, 2)
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


@pytest.fixture(scope="module")
def interrupted_state(tmp_path_factory):
    """The bytes of a training state saved after epoch 1 of a 3-epoch run on a 16-image subset."""
    data, state = learnable_split(24), tmp_path_factory.mktemp("state") / "state.pt"
    with pytest.MonkeyPatch.context() as mp:
        interrupt_in_epoch(mp, 2)
        with pytest.raises(KeyboardInterrupt):
            train(build_model(), data, data, SMALL, state_path=state, device=CPU)
    return state.read_bytes()


SMALL = Recipe(epochs=3, batch_size=8, train_subset=16)


@pytest.fixture
def interrupted(interrupted_state, tmp_path):
    state = tmp_path / "state.pt"
    state.write_bytes(interrupted_state)
    return learnable_split(24), state, SMALL


@pytest.mark.parametrize("change,fragment", [
    ({"train_subset": 12}, "--train-subset 16 there, 12 now"),
    ({"batch_size": 4}, "--batch-size 8 there, 4 now"),
    ({"seed": 1}, "--seed 0 there, 1 now"),
    ({"lr": 0.05}, "--lr 0.1 there, 0.05 now"),
    ({"epochs": 0}, "fewer than the 1 epochs already trained"),
])
def test_resume_refuses_other_options(interrupted, change, fragment):
    data, state, recipe = interrupted
    before = state.read_bytes()
    other = Recipe(**{**recipe.__dict__, **change})
    with pytest.raises(PipelineError, match="holds an interrupted run with other options") as exc:
        train(build_model(), data, data, other, state_path=state, device=CPU)
    assert fragment in str(exc.value) and "--restart" in str(exc.value)
    assert state.read_bytes() == before  # kept for the user to resume


def test_resume_refuses_other_training_images(interrupted):
    data, state, recipe = interrupted
    with pytest.raises(PipelineError, match="other training images: 16 with label digest .* now \\(--data-dir\\)"):
        train(build_model(), learnable_split(24, seed=1), data, recipe, state_path=state, device=CPU)


def test_resume_may_extend_the_run(interrupted, capsys):
    data, state, recipe = interrupted
    history = train(build_model(), data, data, Recipe(**{**recipe.__dict__, "epochs": 2}), state_path=state,
                    device=CPU)
    assert "after epoch 1" in capsys.readouterr().out and [e["epoch"] for e in history.epochs] == [1, 2]


@pytest.mark.parametrize("damage", ["truncated", "foreign", "wrong model"])
def test_unusable_state_is_one_sentence_and_restart_keeps_it_aside(interrupted, damage, capsys):
    data, state, recipe = interrupted
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[:1000])
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, state)
    else:
        saved = torch.load(state, weights_only=True)
        torch.save({**saved, "model": build_model(num_classes=100).state_dict()}, state)
    damaged = state.read_bytes()
    with pytest.raises(PipelineError, match="is not a usable training state.*pass --restart"):
        train(build_model(), data, data, recipe, state_path=state, device=CPU)
    history = train(build_model(), data, data, Recipe(**{**recipe.__dict__, "epochs": 1}), state_path=state,
                    device=CPU, restart=True)
    assert "moved" in capsys.readouterr().out and [e["epoch"] for e in history.epochs] == [1]
    aside = list(state.parent.glob("state.pt.set-aside-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged


def test_divergence_stops_before_saving_a_state(tmp_path):
    data, state = learnable_split(16), tmp_path / "state.pt"
    with pytest.raises(PipelineError, match=r"training diverged in epoch 1 \(loss nan\); nothing was saved"):
        train(build_model(), data, data, Recipe(epochs=2, batch_size=8, lr=1e30), state_path=state, device=CPU)
    assert not state.exists()


def test_check_trained_refuses_chance_accuracy_and_non_finite_weights():
    data, test = learnable_split(16), constant_split()
    model = build_model()
    history = train(model, data, test, Recipe(epochs=1, batch_size=8), device=CPU)
    assert history.epochs[-1]["test_acc"] == 0.1
    with pytest.raises(PipelineError, match=r"test accuracy is 0\.100, at chance level for 10 classes \(<= 0\.15\)"):
        check_trained(model, history, test)
    history.epochs[-1]["test_acc"] = 0.5
    check_trained(model, history, test)  # a model above chance passes
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(PipelineError, match=r"the trained weights are not finite \(1 tensors, first fc.weight\)"):
        check_trained(model, history, test)
