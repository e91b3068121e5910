"""Figures, returned as matplotlib ``Figure`` objects so notebooks can show them and scripts can save them."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))

import matplotlib.pyplot as plt
from jaxtyping import Float, Int
from matplotlib.figure import Figure
from torch import Tensor


def plot_head_accuracy(
    accuracy: Float[Tensor, "layer head"],
    top_heads: Int[Tensor, "k 2"] | None = None,
    title: str = "Probe validation accuracy per head",
) -> Figure:
    """Layer x head heatmap of probe accuracy, with the selected heads starred."""
    layers, heads = accuracy.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * heads + 2.5), max(3.0, 0.22 * layers + 1.5)))
    image = ax.imshow(accuracy.numpy(), aspect="auto", origin="lower", cmap="viridis")
    fig.colorbar(image, ax=ax, label="validation accuracy")
    if top_heads is not None and len(top_heads):
        ax.scatter(
            top_heads[:, 1].numpy(), top_heads[:, 0].numpy(), marker="*", s=60, c="red", label="top-K heads"
        )
        ax.legend(loc="upper right", fontsize="small")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(heads))
    ax.set_title(title)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save ``fig`` atomically (temp file, then rename) and return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{target.suffix}")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, target)
    return target
