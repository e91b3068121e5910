"""Figures, returned as matplotlib ``Figure`` objects so notebooks can show them and scripts can save them.

Importing this module leaves matplotlib's backend alone (``plt.show()`` works in a terminal IPython, and a
machine without a display falls back to a non-interactive backend by itself).

Score plots (:func:`plot_sweep`, :func:`plot_method_scores`, :func:`plot_head_ablation`,
:func:`plot_layer_accuracy`) follow two rules:

* **95% intervals.** A point measured once on ``n`` items gets the Wilson score interval of a proportion of
  ``n`` (exact in kind for an accuracy; conservative for a mean of values in [0, 1] such as MC2, whose
  variance is at most that of a proportion with the same mean). A point that averages several rows (folds,
  seeds, heads) gets the Student-t interval of their mean. Callers with per-question values may pass
  bootstrap intervals instead (:func:`plot_method_scores`).
* **Score axes are not zoomed in on noise.** The y axis holds every point, interval and baseline, padded by
  5% of their range, and spans at least ``min_span`` (default :data:`MIN_SPAN`, 0.2: twenty accuracy points)
  about their middle; when every value lies in [0, 1] the axis stays inside [0, 1]. A change of one question
  among a few dozen therefore looks as small as it is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import cycle
from pathlib import Path
from textwrap import wrap
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import ScaledTranslation
from torch import Tensor

from fasb_tl._io import atomic_write
from fasb_tl.probes import TieBreak, top_head_indices, wilson_interval

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.collections import PathCollection
    from matplotlib.image import AxesImage
    from transformers import PreTrainedTokenizerBase

    from fasb_tl.generation import GenerationResult

MIN_SPAN = 0.2
# The columns plot_sweep reads as "fraction of items steered" when left to find one (evaluation rows call it
# steered_fraction, the notebooks' frames steered).
STEERED_COLUMNS = ("steered_fraction", "steered")
AUTO = "auto"


def _titled(title: str, model: str | None, dataset: str | None) -> str:
    """``title`` with lines naming the model and the data set, when given, wrapped to fit a figure's width."""
    source = " on ".join(part for part in (model, dataset) if part)
    return "\n".join([title, *wrap(source, 60, break_on_hyphens=False)])


def _check_majority(majority: float | None) -> None:
    if majority is not None and not 0.5 <= majority < 1:
        raise ValueError(
            "majority is the share of the larger class among the validation labels, in [0.5, 1); "
            f"got {majority}"
        )


def _check_same_shape(first: Tensor, second: Tensor) -> None:
    if first.shape != second.shape:
        raise ValueError(f"accuracy grids differ in shape: {tuple(first.shape)} vs {tuple(second.shape)}")


def _accuracy_norm(values: np.ndarray, majority: float | None) -> Normalize:
    """The colour scale of accuracy grids: diverging about ``majority`` with the same reach both ways (clipped
    to [0, 1]), so a head as far above the majority rate as another is below it gets as strong a colour;
    without a majority rate, the values' own range."""
    low, high = float(np.min(values)), float(np.max(values))
    if majority is None:
        return Normalize(low, high)
    # A floor on the reach keeps vmin < vcenter < vmax when every head sits at the majority rate.
    reach = max(high - majority, majority - low, 0.01)
    return TwoSlopeNorm(majority, vmin=max(0.0, majority - reach), vmax=min(1.0, majority + reach))


def _cmap(majority: float | None) -> str:
    # White at the majority rate, blue above, red below; a sequential map when nothing marks a centre.
    return "viridis" if majority is None else "RdBu"


def _heatmap_size(layers: int, heads: int) -> tuple[float, float]:
    return max(4.5, 0.45 * heads + 3.0), max(3.0, 0.22 * layers + 2.0)


def _draw_grid(ax: Axes, grid: Float[Tensor, "layer head"], norm: Normalize, cmap: str) -> AxesImage:
    image = ax.imshow(
        grid.numpy(), aspect="auto", origin="lower", cmap=cmap, norm=norm, interpolation="nearest"
    )
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return image


def _star(ax: Axes, cells: Int[Tensor, "k 2"]) -> PathCollection:
    """Stars on the ``(row, column)`` cells, labelled ``top-{k}``."""
    rows, columns = cells[:, 0].numpy(), cells[:, 1].numpy()
    style = {"marker": "*", "s": 70, "c": "gold", "edgecolors": "black", "linewidths": 0.6}
    return ax.scatter(columns, rows, label=f"top-{len(cells)}", **style)


def _legend_below(fig: Figure, handles: list) -> None:
    """A legend under every panel (needs the figure's constrained layout), so it never hides a cell."""
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small")


def _accuracy_colorbar(fig: Figure, image: AxesImage, ax: Axes | list[Axes], majority: float | None) -> None:
    label = "validation accuracy"
    if majority is not None:
        label += f" (white: majority rate {majority:.3f})"
    bar = fig.colorbar(image, ax=ax, label=label)
    if majority is not None:
        bar.ax.axhline(majority, color="black", linewidth=0.8)


def _sorted_within_layers(
    accuracy: Float[Tensor, "layer head"], top_heads: Int[Tensor, "k 2"] | None
) -> tuple[Float[Tensor, "layer head"], Int[Tensor, "k 2"] | None]:
    """Each layer's heads in decreasing accuracy (ties keep head order), and the ``(layer, column)`` cells the
    ``top_heads`` move to."""
    order = torch.sort(accuracy, dim=1, descending=True, stable=True).indices
    if top_heads is None:
        return accuracy.gather(1, order), None
    column = torch.argsort(order, dim=1)
    cells = torch.stack([top_heads[:, 0], column[top_heads[:, 0], top_heads[:, 1]]], dim=1)
    return accuracy.gather(1, order), cells


def plot_head_accuracy(
    accuracy: Float[Tensor, "layer head"],
    top_heads: Int[Tensor, "k 2"] | None = None,
    title: str = "Probe validation accuracy per head",
    *,
    majority: float | None = None,
    model: str | None = None,
    dataset: str | None = None,
    sort_heads: bool = False,
) -> Figure:
    """Layer x head heatmap of probe accuracy, with the selected heads starred.

    ``accuracy`` is ``[layer, head]``; ``top_heads`` ``[k, 2]`` rows of ``(layer, head)``, drawn as stars and
    named ``top-{k}`` in a legend under the grid. With ``majority`` (the share of the larger class among the
    validation labels: the accuracy of a probe that always answers it) the colours diverge from white at that
    rate, blue above and red below, with the same reach both ways; without it the scale is sequential over
    the grid's range. ``model`` and ``dataset`` make a second title line. ``sort_heads`` orders each layer's
    heads by accuracy, best on the left, as ITI's figure does; the x axis is then a rank, not a head index.

    Example::

        fig = plot_head_accuracy(steerer.val_accuracy, steerer.heads, majority=0.55,
                                 model="SmolLM2-135M-Instruct", dataset="builtin", sort_heads=True)
    """
    _check_majority(majority)
    grid, cells = _sorted_within_layers(accuracy, top_heads) if sort_heads else (accuracy, top_heads)
    fig, ax = plt.subplots(figsize=_heatmap_size(*accuracy.shape), layout="constrained")
    image = _draw_grid(ax, grid, _accuracy_norm(grid.numpy(), majority), _cmap(majority))
    if sort_heads:
        ax.set_xticks([])
        ax.set_xlabel("heads of each layer, sorted by accuracy (best left)")
    _accuracy_colorbar(fig, image, ax, majority)
    _legend_below(fig, [_star(ax, cells)] if cells is not None and len(cells) else [])
    ax.set_title(_titled(title, model, dataset))
    return fig


def plot_head_accuracy_pair(
    first: Float[Tensor, "layer head"],
    second: Float[Tensor, "layer head"],
    labels: tuple[str, str] = ("first", "second"),
    title: str = "Probe validation accuracy per head",
    *,
    top_heads: tuple[Int[Tensor, "k 2"] | None, Int[Tensor, "k 2"] | None] = (None, None),
    majority: float | None = None,
    model: str | None = None,
    dataset: str | None = None,
) -> Figure:
    """Two ``[layer, head]`` accuracy grids side by side on one colour scale (one colour bar), e.g. two folds,
    two probe formats or two models of one shape; ``top_heads`` stars each grid's selected heads and
    ``majority`` centres the shared scale as in :func:`plot_head_accuracy`.

    Example::

        fig = plot_head_accuracy_pair(fold0.val_accuracy, fold1.val_accuracy, ("fold 0", "fold 1"),
                                      top_heads=(fold0.heads, fold1.heads), majority=0.52)
    """
    _check_same_shape(first, second)
    _check_majority(majority)
    norm = _accuracy_norm(torch.cat([first.flatten(), second.flatten()]).numpy(), majority)
    width, height = _heatmap_size(*first.shape)
    fig, axes = plt.subplots(1, 2, figsize=(2 * width - 1.5, height), sharey=True, layout="constrained")
    handles = {}
    for ax, grid, label, cells in zip(axes, (first, second), labels, top_heads):
        image = _draw_grid(ax, grid, norm, _cmap(majority))
        ax.set_title(label)
        if cells is not None and len(cells):
            star = _star(ax, cells)
            handles.setdefault(star.get_label(), star)
    axes[1].set_ylabel("")
    _accuracy_colorbar(fig, image, list(axes), majority)
    _legend_below(fig, list(handles.values()))
    fig.suptitle(_titled(title, model, dataset))
    return fig


def plot_head_accuracy_difference(
    first: Float[Tensor, "layer head"],
    second: Float[Tensor, "layer head"],
    labels: tuple[str, str] = ("first", "second"),
    title: str = "Change in probe validation accuracy per head",
    *,
    model: str | None = None,
    dataset: str | None = None,
) -> Figure:
    """``second - first`` per head on a diverging scale centred on 0 (white: no change), with the same reach
    both ways.

    Example::

        fig = plot_head_accuracy_difference(qa_probes.val_accuracy_, gen_probes.val_accuracy_,
                                            ("Q: A: format", "generation format"))
    """
    _check_same_shape(first, second)
    difference = second - first
    # A floor on the reach keeps the scale valid when the grids are equal.
    reach = max(float(difference.abs().max()), 0.01)
    fig, ax = plt.subplots(figsize=_heatmap_size(*first.shape), layout="constrained")
    image = _draw_grid(ax, difference, TwoSlopeNorm(0.0, vmin=-reach, vmax=reach), "RdBu")
    fig.colorbar(image, ax=ax, label=f"{labels[1]} minus {labels[0]}")
    ax.set_title(_titled(title, model, dataset))
    return fig


def _t_interval(values: np.ndarray, axis: int = 0, confidence: float = 0.95) -> tuple[np.ndarray, ...]:
    """Mean of ``values`` along ``axis`` and its Student-t interval (NaN with fewer than two values)."""
    # scipy comes with scikit-learn; imported here so that importing this module stays light.
    from scipy.stats import t

    count = values.shape[axis]
    mean = values.mean(axis=axis)
    if count < 2:
        return mean, np.full_like(mean, np.nan), np.full_like(mean, np.nan)
    half = t.ppf((1 + confidence) / 2, count - 1) * values.std(axis=axis, ddof=1) / np.sqrt(count)
    return mean, mean - half, mean + half


def _span_ylim(ax: Axes, values: Sequence[float] | np.ndarray, min_span: float) -> None:
    """The score-axis rule (module docstring): every value, 5% padding, at least ``min_span``, inside [0, 1]
    when the values are."""
    finite = np.asarray(values, dtype=float).ravel()
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return
    low, high = float(finite.min()), float(finite.max())
    pad = 0.05 * (high - low)
    low, high = low - pad, high + pad
    if high - low < min_span:
        middle = (low + high) / 2
        low, high = middle - min_span / 2, middle + min_span / 2
    if finite.min() >= 0 and finite.max() <= 1:
        shift = max(0.0, -low) - max(0.0, high - 1)
        low, high = max(0.0, low + shift), min(1.0, high + shift)
    ax.set_ylim(low, high)


def _stack_grids(
    accuracy: Float[Tensor, "layer head"] | Sequence[Float[Tensor, "layer head"]],
) -> Float[Tensor, "grid layer head"]:
    grids = [accuracy] if isinstance(accuracy, Tensor) else list(accuracy)
    if not grids:
        raise ValueError("no accuracy grid given")
    for grid in grids[1:]:
        _check_same_shape(grids[0], grid)
    return torch.stack([grid.double() for grid in grids])


def plot_layer_accuracy(
    accuracy: Float[Tensor, "layer head"] | Sequence[Float[Tensor, "layer head"]],
    title: str = "Probe validation accuracy by layer",
    *,
    majority: float | None = None,
    chance: float | None = None,
    model: str | None = None,
    dataset: str | None = None,
    min_span: float = MIN_SPAN,
) -> Figure:
    """Best head and mean over heads of each layer, over depth, against the majority-label rate.

    One ``[layer, head]`` grid: the best head's line, the mean over the layer's heads with its 95% Student-t
    interval across those heads, and every head as a grey dot. Several grids of one shape (folds): both lines
    averaged over the grids, each with its 95% Student-t interval across the grids. ``majority`` draws the
    majority-label rate; ``chance`` draws a chance line only when given (0.5 is chance only for balanced
    labels). The y axis follows the module's score-axis rule.

    Example::

        fig = plot_layer_accuracy([fold0.val_accuracy, fold1.val_accuracy], majority=0.52)
    """
    _check_majority(majority)
    grids = _stack_grids(accuracy)
    count, layers, heads = grids.shape
    depth = np.arange(layers)
    fig, ax = plt.subplots(figsize=(7.5, 4.0), layout="constrained")
    if count == 1:
        best = best_low = best_high = grids[0].max(dim=1).values.numpy()
        mean, low, high = _t_interval(grids[0].numpy(), axis=1)
        across = f"{heads} heads"
        dots = grids[0].flatten().numpy()
        ax.scatter(np.repeat(depth, heads), dots, s=6, color="grey", alpha=0.5, label="a head")
    else:
        best, best_low, best_high = _t_interval(grids.max(dim=2).values.numpy())
        mean, low, high = _t_interval(grids.mean(dim=2).numpy())
        across = f"{count} grids"
        dots = np.array([])
        ax.fill_between(depth, best_low, best_high, color="tab:blue", alpha=0.15, linewidth=0)
    ax.plot(depth, best, marker="o", color="tab:blue", label="best head")
    ax.plot(depth, mean, marker="o", color="tab:orange", label="mean over heads")
    band = {"color": "tab:orange", "alpha": 0.2, "linewidth": 0, "label": f"95% t over {across}"}
    ax.fill_between(depth, low, high, **band)
    lines = [value for value in (majority, chance) if value is not None]
    if majority is not None:
        ax.axhline(majority, color="black", linestyle="--", label=f"majority rate {majority:.3f}")
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", label=f"chance {chance:.3f}")
    _span_ylim(ax, np.concatenate([best_low, best_high, mean, low, high, dots, lines]), min_span)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("validation accuracy")
    ax.set_title(_titled(title, model, dataset))
    fig.legend(loc="outside right upper", fontsize="small")
    return fig


def top_head_set(
    accuracy: Float[Tensor, "layer head"], k: int, tie_break: TieBreak = "released"
) -> set[tuple[int, int]]:
    """The ``k`` best heads as ``(layer, head)`` pairs, chosen as fitting chooses them
    (:func:`~fasb_tl.probes.top_head_indices`)."""
    return {(layer, head) for layer, head in top_head_indices(accuracy, k, tie_break).tolist()}


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


def _n_text(counts: Sequence[int | None]) -> str:
    """``n=40``, ``n=38-41`` over the points of a line, or ``n unknown``."""
    known = [c for c in counts if c is not None]
    if not known:
        return "n unknown"
    low, high = min(known), max(known)
    return f"n={low}" if low == high else f"n={low}-{high}"


def _score_axes(steered: bool, width: float) -> tuple[Figure, Axes, Axes | None]:
    """A score panel and, for ``steered``, a short panel below it for the fraction of items steered."""
    if not steered:
        fig, ax = plt.subplots(figsize=(width, 3.8), layout="constrained")
        return fig, ax, None
    fig, (ax, below) = plt.subplots(
        2, 1, figsize=(width, 5.2), sharex=True, height_ratios=[3, 1.2], layout="constrained"
    )
    below.set_ylim(-0.05, 1.05)
    below.set_yticks([0, 0.5, 1])
    return fig, ax, below


def _draw_baseline(
    ax: Axes, baseline: float | None, interval: tuple[float, float] | None, n: int | None
) -> list[float]:
    """The ``none`` method as a dashed line (and its interval as a band); returns what the y axis must hold."""
    if baseline is None:
        return []
    label = f"none (no steering): {baseline:.3f}" + ("" if n is None else f", n={n}")
    ax.axhline(baseline, color="black", linestyle="--", linewidth=1, label=label)
    if interval is None:
        return [baseline]
    ax.axhspan(*interval, color="grey", alpha=0.15, linewidth=0, label="none: 95% interval")
    return [baseline, *interval]


def _errors(estimates: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``[2, m]`` error-bar lengths below and above each estimate (NaN where a point has no interval)."""
    # Clipped at 0: at a rate of 0 or 1 the Wilson bound equals the estimate only up to rounding.
    return np.maximum(np.stack([estimates - low, high - estimates]), 0.0)


def _wilson(value: float, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of one proportion ``value`` of ``n`` items."""
    (low,), (high,) = wilson_interval(np.array([value]), n)
    return float(low), float(high)


def _items(part: pd.DataFrame, n: int | str | None) -> list[int] | None:
    """The number of items behind each row of ``part``: ``n`` itself, its column, or None (unknown)."""
    if n is None:
        return None
    return part[n].astype(int).tolist() if isinstance(n, str) else [n] * len(part)


def _steered_column(frame: pd.DataFrame, y: str, steered: str | None) -> str | None:
    if steered != AUTO:
        return steered
    return next((c for c in STEERED_COLUMNS if c in frame.columns and c != y), None)


def _sweep_points(group: pd.DataFrame, x: str, y: str, n: int | str | None) -> pd.DataFrame:
    """One row per value of ``x``: the mean of ``y``, its 95% interval and kind, and the items behind it."""
    points = []
    for value, part in group.groupby(x, sort=True):
        values = part[y].to_numpy(dtype=float)
        items = _items(part, n)
        if len(values) > 1:
            estimate, low, high = _t_interval(values)
            kind = "Student t over rows"
        elif items is not None:
            (low, high), estimate, kind = _wilson(values[0], items[0]), values[0], "Wilson"
        else:
            estimate, low, high, kind = values[0], np.nan, np.nan, None
        total = None if items is None else sum(items)
        points.append({x: value, "estimate": estimate, "low": low, "high": high, "n": total, "kind": kind})
    return pd.DataFrame(points)


def plot_sweep(
    frame: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    title: str | None = None,
    *,
    n: int | str | None = None,
    baseline: float | None = None,
    steered: str | None = AUTO,
    min_span: float = MIN_SPAN,
) -> Figure:
    """``y`` against ``x`` with 95% intervals, one line per value of ``hue`` (or a single line).

    ``frame`` has one row per measurement (a setting, and also a fold or a seed). ``n`` is the number of items
    behind each row, an int or the name of a column; the legend shows it per line (summed over the rows of a
    point). Intervals (module docstring): a point of several rows is their mean with a 95% Student-t interval
    over them; a point of one row gets the 95% Wilson interval of ``y`` as a proportion of ``n`` items, and
    none when ``n`` is not given. The legend's title names the kinds used. ``baseline``, the ``none``
    method's ``y``, is a dashed line, with its Wilson band when ``n`` is an int. ``steered`` names a column
    of the fraction of items steered, drawn (mean per point) in a panel below; by default the first of
    :data:`STEERED_COLUMNS` the frame has (other than ``y``); ``None`` leaves the panel out. The y axis holds
    every point, interval and the baseline and spans at least ``min_span`` (the score-axis rule). Lines of
    one ``x`` are nudged sideways a little so that their intervals stay apart.

    Example::

        frame = pd.DataFrame({"alpha": [5, 15, 5, 15], "accuracy": [0.50, 0.60, 0.55, 0.50],
                              "variant": ["iti", "iti", "fasb", "fasb"], "steered": [1, 1, 0.4, 0.5]})
        fig = plot_sweep(frame, "alpha", "accuracy", hue="variant", n=40, baseline=0.5)
    """
    steered = _steered_column(frame, y, steered)
    wanted = [x, y, hue, steered, n if isinstance(n, str) else None]
    missing = [c for c in wanted if c is not None and c not in frame.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the frame (it has {list(frame.columns)})")
    fig, ax, below = _score_axes(steered is not None, width=8.0)
    groups = list(frame.groupby(hue, sort=True)) if hue is not None else [(None, frame)]
    # Lines of equal values would hide each other; distinct markers and dashes keep all of them visible.
    styles = zip(cycle("osD^v"), cycle(["-", "--", ":", "-."]))
    held, kinds = [], set()
    for index, ((value, group), (marker, dashes)) in enumerate(zip(groups, styles)):
        points = _sweep_points(group, x, y, n)
        kinds |= set(points["kind"].dropna())
        name = _n_text(points["n"].tolist())
        label = name if hue is None else f"{hue}={value}, {name}"
        nudge = ScaledTranslation((index - (len(groups) - 1) / 2) * 3 / 72, 0, fig.dpi_scale_trans)
        estimates, low, high = (points[c].to_numpy(dtype=float) for c in ("estimate", "low", "high"))
        style = {"marker": marker, "linestyle": dashes, "capsize": 3, "alpha": 0.85, "label": label}
        ax.errorbar(
            points[x], estimates, _errors(estimates, low, high), transform=ax.transData + nudge, **style
        )
        held += [estimates, low, high]
        if below is not None:
            fractions = group.groupby(x, sort=True)[steered].mean()
            below.plot(fractions.index, fractions.to_numpy(), marker=marker, linestyle=dashes, alpha=0.85)
    band = _wilson(baseline, n) if baseline is not None and isinstance(n, int) else None
    held.append(_draw_baseline(ax, baseline, band, n if isinstance(n, int) else None))
    _span_ylim(ax, np.concatenate([np.ravel(h) for h in held]), min_span)
    ax.set_ylabel(y)
    (below if below is not None else ax).set_xlabel(x)
    if below is not None:
        below.set_ylabel("fraction steered")
    if title is not None:
        ax.set_title(title)
    intervals = "95% intervals: " + ", ".join(sorted(kinds)) if kinds else "no intervals (n unknown)"
    fig.legend(loc="outside right upper", fontsize="small", title=intervals, title_fontsize="small")
    return fig


def plot_method_scores(
    labels: Sequence[str],
    estimates: Sequence[float],
    intervals: Sequence[tuple[float, float]],
    *,
    n: int | Sequence[int],
    baseline: float | None = None,
    baseline_interval: tuple[float, float] | None = None,
    ylabel: str = "accuracy",
    title: str | None = None,
    interval: str = "95% interval",
    steered: Sequence[float] | None = None,
    steered_label: str = "fraction steered",
    min_span: float = MIN_SPAN,
) -> Figure:
    """One score per method (or setting) with its interval, against the ``none`` baseline.

    ``labels``, ``estimates`` and ``intervals`` (``(low, high)`` pairs) are aligned, one per method; ``n`` is
    the number of items behind each score (one int, or one per method), shown in the legend with
    ``interval``, the kind of interval (e.g. ``"95% bootstrap CI over questions"``). ``baseline`` is drawn as
    a dashed line and ``baseline_interval`` as a band around it. ``steered`` (one fraction per method) adds a
    bar panel below, labelled ``steered_label``. The y axis follows the module's score-axis rule.

    Example::

        fig = plot_method_scores(["iti", "fasb"], [0.31, 0.35], [(0.27, 0.35), (0.31, 0.39)], n=409,
                                 baseline=0.26, baseline_interval=(0.22, 0.30), steered=[1.0, 0.79])
    """
    counts = [n] * len(labels) if isinstance(n, int) else list(n)
    if not len(labels) == len(estimates) == len(intervals) == len(counts) > 0:
        raise ValueError(
            f"need one estimate, one interval and one n per label, got {len(labels)} labels, "
            f"{len(estimates)} estimates, {len(intervals)} intervals and {len(counts)} counts"
        )
    if steered is not None and len(steered) != len(labels):
        raise ValueError(f"got {len(steered)} steered fractions for {len(labels)} labels")
    fig, ax, below = _score_axes(steered is not None, width=max(7.0, 0.7 * len(labels) + 4.5))
    values = np.asarray(estimates, dtype=float)
    low, high = (np.asarray(side, dtype=float) for side in zip(*intervals))
    places = np.arange(len(labels))
    label = f"{interval}, {_n_text(counts)}"
    ax.errorbar(places, values, _errors(values, low, high), fmt="o", capsize=4, color="tab:blue", label=label)
    shown = _draw_baseline(ax, baseline, baseline_interval, n if isinstance(n, int) else None)
    _span_ylim(ax, np.concatenate([values, low, high, shown]), min_span)
    ax.set_ylabel(ylabel)
    if below is not None:
        below.bar(places, steered, color="tab:grey", width=0.5)
        below.set_ylabel(steered_label)
    bottom = below if below is not None else ax
    bottom.set_xticks(places, labels, rotation=30, ha="right")
    if title is not None:
        ax.set_title(title)
    fig.legend(loc="outside right upper", fontsize="small")
    return fig


def plot_head_ablation(
    labels: Sequence[str],
    scores: Sequence[float],
    baseline: float,
    n: int,
    ylabel: str = "MC accuracy",
    title: str = "Steering one head at a time",
    *,
    min_span: float = MIN_SPAN,
) -> Figure:
    """The score each steering setting (e.g. a single head) reaches on ``n`` items, against the unsteered
    ``baseline``, each with its 95% Wilson interval (the baseline's as a band).

    The intervals are for each score alone: two settings scored on the same questions are paired, so a
    difference between them can be significant although their intervals overlap.

    Example::

        fig = plot_head_ablation(["L12H3", "L14H0", "all 24"], [0.42, 0.40, 0.47], baseline=0.40, n=48)
    """
    if len(labels) != len(scores):
        raise ValueError(f"got {len(labels)} labels for {len(scores)} scores")
    return plot_method_scores(
        labels,
        scores,
        [_wilson(score, n) for score in scores],
        n=n,
        baseline=baseline,
        baseline_interval=_wilson(baseline, n),
        ylabel=ylabel,
        title=title,
        interval="95% Wilson interval",
        min_span=min_span,
    )


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
