"""Plots people would rather look at than read: the training curve."""

from pathlib import Path

from ..artifacts import atomic_path


def plot_training(epochs: list[dict], path: Path, title: str = "CIFAR-10") -> Path:
    """Test accuracy and training loss per epoch, with the learning-rate drops marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [e["epoch"] for e in epochs]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(x, [e["test_acc"] for e in epochs], label="test accuracy", color="tab:blue")
    ax.plot(x, [e["train_acc"] for e in epochs], label="train accuracy (augmented)", color="tab:green", alpha=0.6)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    best = max(epochs, key=lambda e: e["test_acc"])
    ax.axhline(epochs[-1]["test_acc"], color="tab:blue", ls=":", lw=0.8)
    ax.set_title(f"{title}: final test accuracy {epochs[-1]['test_acc']:.4f} (best {best['test_acc']:.4f})")
    loss_ax = ax.twinx()
    loss_ax.plot(x, [e["loss"] for e in epochs], label="training loss", color="tab:red", alpha=0.5)
    loss_ax.set_ylabel("loss")
    for prev, cur in zip(epochs, epochs[1:]):
        if cur["lr"] != prev["lr"]:
            ax.axvline(prev["epoch"], color="grey", ls="--", lw=0.8)
    fig.legend(loc="lower right", bbox_to_anchor=(0.88, 0.15))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
