"""Figures, returned as matplotlib ``Figure`` objects so notebooks can show them and scripts can save them.

Importing this module leaves matplotlib's backend alone (``plt.show()`` works in a terminal IPython, and a
machine without a display falls back to a non-interactive backend by itself).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import cycle
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch
from jaxtyping import Float, Int
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from fasb_tl._io import atomic_write

if TYPE_CHECKING:
    import pandas as pd
    from transformers import PreTrainedTokenizerBase

    from fasb_tl.generation import GenerationResult


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


def plot_layer_accuracy(
    accuracy: Float[Tensor, "layer head"], title: str = "Probe validation accuracy by layer"
) -> Figure:
    """Best and mean head accuracy of each layer, as two lines over depth."""
    layers = np.arange(accuracy.shape[0])
    fig, ax = plt.subplots(figsize=(6.0, 3.5))
    ax.plot(layers, accuracy.max(dim=1).values.numpy(), marker="o", label="best head")
    ax.plot(layers, accuracy.mean(dim=1).numpy(), marker="o", label="mean over heads")
    ax.axhline(0.5, color="grey", linestyle=":", label="chance")
    ax.set_xlabel("layer")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def top_head_set(accuracy: Float[Tensor, "layer head"], k: int) -> set[tuple[int, int]]:
    """The ``k`` best heads as ``(layer, head)`` pairs, ties to the lower index (as ``HeadProbes.top_heads``)."""
    heads = accuracy.shape[1]
    flat = accuracy.flatten().tolist()
    best = sorted(range(len(flat)), key=lambda i: (-flat[i], i))[:k]
    return {(i // heads, i % heads) for i in best}


def plot_backend_agreement(
    acc_a: Float[Tensor, "layer head"],
    acc_b: Float[Tensor, "layer head"],
    labels: tuple[str, str] = ("torch", "sklearn"),
    k: int = 24,
) -> Figure:
    """Per-head validation accuracy of two probe fits against each other, with the diagonal."""
    if acc_a.shape != acc_b.shape:
        raise ValueError(f"accuracy grids differ in shape: {tuple(acc_a.shape)} vs {tuple(acc_b.shape)}")
    mean_diff = float((acc_a - acc_b).abs().mean())
    overlap = len(top_head_set(acc_a, k) & top_head_set(acc_b, k))
    low = float(min(acc_a.min(), acc_b.min())) - 0.02
    high = float(max(acc_a.max(), acc_b.max())) + 0.02
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1)
    ax.scatter(acc_a.flatten().numpy(), acc_b.flatten().numpy(), s=12, alpha=0.5)
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel(f"{labels[0]} validation accuracy")
    ax.set_ylabel(f"{labels[1]} validation accuracy")
    ax.set_title(f"mean |diff| {mean_diff:.4f}, top-{k} overlap {overlap}/{k}", fontsize="medium")
    fig.tight_layout()
    return fig


def plot_projection_histograms(
    projections_true: Sequence[Float[Tensor, " n_true"]],
    projections_false: Sequence[Float[Tensor, " n_false"]],
    titles: Sequence[str],
) -> Figure:
    """One panel per head: histograms of true and false answers' projections on its direction."""
    if not len(projections_true) == len(projections_false) == len(titles) > 0:
        raise ValueError(
            f"need one true set, one false set and one title per panel, got "
            f"{len(projections_true)}, {len(projections_false)} and {len(titles)}"
        )
    fig, axes = plt.subplots(1, len(titles), figsize=(3.2 * len(titles), 3.0), squeeze=False)
    for ax, true, false, title in zip(axes[0], projections_true, projections_false, titles):
        # Shared bins, so the two classes' bars line up.
        bins = np.histogram_bin_edges(torch.cat([true, false]).numpy(), bins=20)
        ax.hist(true.numpy(), bins=bins, alpha=0.6, label="true answers")
        ax.hist(false.numpy(), bins=bins, alpha=0.6, label="false answers")
        ax.set_title(title)
        ax.set_xlabel("projection on direction")
    axes[0, 0].set_ylabel("count")
    axes[0, 0].legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_direction_cosines(directions: Float[Tensor, "k d_head"], heads: Int[Tensor, "k 2"]) -> Figure:
    """Cosine similarity between the heads' steering directions, labelled ``L{layer}H{head}``."""
    unit = directions / directions.norm(dim=-1, keepdim=True)
    cosines = (unit @ unit.T).numpy()
    names = [f"L{layer}H{head}" for layer, head in heads.tolist()]
    size = max(3.5, 0.4 * len(names) + 1.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(cosines, vmin=-1, vmax=1, cmap="RdBu_r")
    fig.colorbar(image, ax=ax, label="cosine similarity")
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_title("Steering directions: cosine similarity")
    fig.tight_layout()
    return fig


def plot_head_ablation(
    labels: Sequence[str], changes: Sequence[float], baseline: float, ylabel: str = "accuracy change"
) -> Figure:
    """Bars of the change each steering setting (e.g. a single head) makes against a baseline score."""
    if len(labels) != len(changes):
        raise ValueError(f"got {len(labels)} labels for {len(changes)} changes")
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(labels) + 1.5), 3.5))
    colours = ["tab:green" if change > 0 else "tab:red" for change in changes]
    ax.bar(range(len(labels)), changes, color=colours)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(f"Steering ablation (baseline {baseline:.3f})")
    fig.tight_layout()
    return fig


def plot_sweep(
    frame: pd.DataFrame, x: str, y: str, hue: str | None = None, title: str | None = None
) -> Figure:
    """``y`` against ``x`` as lines, one per value of ``hue`` (or a single line)."""
    missing = [c for c in (x, y, hue) if c is not None and c not in frame.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the frame (it has {list(frame.columns)})")
    fig, ax = plt.subplots(figsize=(5.0, 3.5))
    groups = frame.groupby(hue, sort=True) if hue is not None else [(None, frame)]
    # Lines of equal values would hide each other; distinct markers and dashes keep all of them visible.
    styles = zip(cycle("osD^v"), cycle(["-", "--", ":", "-."]))
    for (value, group), (marker, dashes) in zip(groups, styles):
        group = group.sort_values(x)
        label = None if hue is None else f"{hue}={value}"
        ax.plot(group[x], group[y], marker=marker, linestyle=dashes, alpha=0.8, label=label)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if title is not None:
        ax.set_title(title)
    if hue is not None:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_trigger_histogram(results: Sequence[GenerationResult]) -> Figure:
    """Two panels over the triggered answers: the step at which FASB fired, and how many tokens it removed."""
    fired = [r for r in results if r.triggered]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 3.0))
    panels = [
        (left, [r.trigger_step for r in fired], "trigger step (generated tokens)"),
        (right, [r.n_removed for r in fired], "tokens removed"),
    ]
    for ax, values, label in panels:
        if values:
            # Integer-centred bins: every count gets its own bar.
            ax.hist(values, bins=np.arange(min(values), max(values) + 2) - 0.5)
            ax.set_xlim(min(values) - 1.5, max(values) + 1.5)
        else:
            ax.text(0.5, 0.5, "no triggers", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(label)
        ax.set_ylabel("answers")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{len(fired)} of {len(results)} answers triggered")
    fig.tight_layout()
    return fig


def render_backtrack(
    result: GenerationResult, tokenizer: PreTrainedTokenizerBase, end: str | None = None
) -> str:
    """The answer as ``kept [-removed-] regenerated``, the final text cut at ``end`` (e.g. ``"\\nQ:"``)."""

    def cut(text: str) -> str:
        return (text.split(end)[0] if end else text).strip()

    if not result.triggered or result.steered_from is None:
        return cut(result.text)

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    kept = decode(result.token_ids[: result.steered_from]).strip()
    removed = decode(result.removed_token_ids).strip()
    regenerated = cut(decode(result.token_ids[result.steered_from :]))
    parts = [kept, f"[-{removed}-]", regenerated]
    return " ".join(part for part in parts if part)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save ``fig`` atomically (temp file, then rename) and return the path."""
    target = Path(path)
    # The temporary name ends in .tmp, so the format comes from the target's suffix.
    return atomic_write(target, lambda tmp: fig.savefig(tmp, dpi=dpi, format=target.suffix[1:] or None))
