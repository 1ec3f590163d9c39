"""The plots logged with every training run: the loss curve and the trained weight norm per layer."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib's pyplot on the file-only backend."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def plot_loss(history: list[dict], path: Path) -> None:
    plt = pyplot()
    steps = [h["step"] for h in history if "loss" in h]
    losses = [h["loss"] for h in history if "loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, marker="o", markersize=3, label="train loss")
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="s", markersize=3, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_layer_norms(norms: dict[str, float], title: str, path: Path) -> None:
    """One bar per layer (and per group outside the layers), in the order given."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(norms)), 3.5))
    ax.bar(range(len(norms)), list(norms.values()))
    ax.set_xticks(range(len(norms)), list(norms), rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("L2 norm")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
