"""The publication rules of the figures (colour centre, legends, sorting, shared scales, baselines, intervals,
axis spans) and plot_result_folder on the committed reduced run and on a fresh tiny-model result folder."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # this module only: the library itself never picks a backend

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import TwoSlopeNorm

from fasb_tl.data import load_truthfulqa
from fasb_tl.evaluation.context import EvalContext
from fasb_tl.evaluation.multichoice import MultiChoiceConfig, run_multichoice
from fasb_tl.evaluation.truthfulqa import TruthfulQAConfig, TruthfulQAFolds, run_mc
from fasb_tl.evaluation.truthfulqa_generation import run_generation
from fasb_tl.plotting import (
    MIN_SPAN,
    plot_head_ablation,
    plot_head_accuracy,
    plot_head_accuracy_difference,
    plot_head_accuracy_pair,
    plot_layer_accuracy,
    plot_method_scores,
    plot_sweep,
)
from fasb_tl.probes import wilson_interval
from fasb_tl.report_figures import ResultFolderError, plot_result_folder

REDUCED = Path(__file__).resolve().parents[1] / "results" / "reduced" / "smollm2-135m-instruct"
TASKS = ("copa", "storycloze", "nli", "mmlu", "sst2", "winogrande")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def grid() -> torch.Tensor:
    torch.manual_seed(0)
    return 0.4 + 0.5 * torch.rand(6, 4)


def _overlap(first, second) -> bool:
    return first.x0 < second.x1 and second.x0 < first.x1 and first.y0 < second.y1 and second.y0 < first.y1


def test_heatmap_scale_is_centred_on_the_majority_rate(grid):
    image = plot_head_accuracy(grid, majority=0.62).axes[0].images[0]
    assert isinstance(image.norm, TwoSlopeNorm) and image.norm.vcenter == pytest.approx(0.62)
    assert image.norm.vmin <= grid.min() and image.norm.vmax >= grid.max()
    # Same reach both ways, as long as neither end is clipped at 0 or 1.
    assert image.norm.vcenter - image.norm.vmin == pytest.approx(image.norm.vmax - image.norm.vcenter)
    plain = plot_head_accuracy(grid).axes[0].images[0]
    assert not isinstance(plain.norm, TwoSlopeNorm)
    assert (plain.norm.vmin, plain.norm.vmax) == pytest.approx((grid.min().item(), grid.max().item()))
    with pytest.raises(ValueError, match="share of the larger class"):
        plot_head_accuracy(grid, majority=0.3)


def test_heatmap_legend_names_the_actual_k_outside_the_grid_and_the_title_the_source(grid):
    heads = torch.tensor([[0, 1], [2, 3], [5, 0], [4, 2], [1, 1]])
    fig = plot_head_accuracy(grid, heads, model="tiny-llama", dataset="builtin, fold 0")
    [legend] = fig.legends
    assert [text.get_text() for text in legend.get_texts()] == ["top-5"]
    ax = fig.axes[0]
    assert len(ax.collections[0].get_offsets()) == 5
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert not _overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer))
    assert "tiny-llama on builtin, fold 0" in ax.get_title()
    assert not plot_head_accuracy(grid).legends  # nothing starred, no legend


def test_per_layer_sort_orders_each_layer_and_moves_the_stars_with_their_heads(grid):
    heads = torch.tensor([[0, 0], [3, 2], [5, 3]])
    fig = plot_head_accuracy(grid, heads, sort_heads=True)
    ax = fig.axes[0]
    drawn = np.asarray(ax.images[0].get_array())
    assert (np.diff(drawn, axis=1) <= 0).all()  # best head on the left of every layer
    assert np.allclose(np.sort(drawn, axis=1), np.sort(grid.numpy(), axis=1))  # same heads, reordered
    assert not (np.diff(grid.numpy(), axis=1) <= 0).all()  # so the check above could fail
    for (column, layer), (head_layer, head) in zip(ax.collections[0].get_offsets(), heads.tolist()):
        assert layer == head_layer and drawn[int(layer), int(column)] == pytest.approx(
            grid[head_layer, head].item()
        )


def test_pair_heatmaps_share_one_scale_and_the_difference_is_centred_on_zero(grid):
    other = grid.flip(0) * 0.8
    fig = plot_head_accuracy_pair(grid, other, ("fold 0", "fold 1"), majority=0.55)
    left, right = (ax.images[0] for ax in fig.axes[:2])
    assert (left.norm.vmin, left.norm.vmax) == (right.norm.vmin, right.norm.vmax)
    both = torch.cat([grid, other])
    assert left.norm.vmin <= both.min() and left.norm.vmax >= both.max()
    assert left.norm.vcenter == pytest.approx(0.55)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["fold 0", "fold 1"]
    difference = plot_head_accuracy_difference(grid, other).axes[0].images[0]
    assert isinstance(difference.norm, TwoSlopeNorm) and difference.norm.vcenter == 0.0
    assert difference.norm.vmin == pytest.approx(-difference.norm.vmax)
    assert np.allclose(difference.get_array(), (other - grid).numpy())
    with pytest.raises(ValueError, match="differ in shape"):
        plot_head_accuracy_pair(grid, grid[:3])


def _labelled(ax, start: str) -> list:
    return [line for line in ax.lines if line.get_label().startswith(start)]


def test_layer_plot_draws_the_majority_rate_and_chance_only_when_given(grid):
    ax = plot_layer_accuracy(grid, majority=0.58).axes[0]
    [majority] = _labelled(ax, "majority rate")
    assert list(majority.get_ydata()) == [0.58, 0.58]
    assert not _labelled(ax, "chance")
    assert _labelled(plot_layer_accuracy(grid, chance=0.5).axes[0], "chance")[0].get_ydata()[0] == 0.5


def test_layer_plot_over_folds_averages_the_grids_with_an_interval(grid):
    other = grid.flip(1)
    ax = plot_layer_accuracy([grid, other]).axes[0]
    best, mean = ax.lines[:2]
    expected = (grid.mean(1) + other.mean(1)) / 2
    assert np.allclose(mean.get_ydata(), expected.numpy())
    assert np.allclose(best.get_ydata(), grid.max(1).values.numpy())  # flipping heads keeps each layer's best
    band = [c for c in ax.collections if c.get_label().startswith("95% t over 2 grids")]
    assert band


def _sweep_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "alpha": [5, 1, 5, 1],
            "accuracy": [0.60, 0.45, 0.70, 0.50],
            "method": ["iti", "iti", "fasb", "fasb"],
            "steered": [1.0, 1.0, 0.3, 0.2],
        }
    )


def test_sweep_shows_n_intervals_and_the_none_baseline():
    frame = _sweep_frame()
    fig = plot_sweep(frame, "alpha", "accuracy", hue="method", n=40, baseline=0.55)
    ax = fig.axes[0]
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert "method=fasb, n=40" in labels and "method=iti, n=40" in labels
    assert "Wilson" in fig.legends[0].get_title().get_text()
    [baseline] = _labelled(ax, "none")
    assert list(baseline.get_ydata()) == [0.55, 0.55]
    fasb = next(c for c in ax.containers if c.get_label().startswith("method=fasb"))
    data_line, _, (bars,) = fasb.lines
    assert data_line.get_xdata().tolist() == [1, 5]  # sorted by x
    low, high = wilson_interval(np.array([0.50, 0.70]), 40)
    ends = [segment[:, 1] for segment in bars.get_segments()]
    assert np.allclose(ends, np.stack([low, high], axis=1))


def test_sweep_over_repeated_rows_uses_a_t_interval_and_sums_n():
    frame = pd.concat([_sweep_frame(), _sweep_frame().assign(accuracy=lambda f: f.accuracy - 0.1)])
    fig = plot_sweep(frame, "alpha", "accuracy", hue="method", n=40)
    assert "Student t" in fig.legends[0].get_title().get_text()
    assert "method=iti, n=80" in [text.get_text() for text in fig.legends[0].get_texts()]


def test_sweep_puts_the_steered_fraction_in_a_panel_below_when_the_frame_has_it():
    frame = _sweep_frame()
    fig = plot_sweep(frame, "alpha", "accuracy", hue="method", n=40)
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "fraction steered"
    assert sorted(line.get_ydata().tolist() for line in fig.axes[1].lines) == [[0.2, 0.3], [1.0, 1.0]]
    assert len(plot_sweep(frame, "alpha", "accuracy", hue="method", steered=None).axes) == 1
    assert len(plot_sweep(frame.drop(columns="steered"), "alpha", "accuracy").axes) == 1
    # The steered fraction itself as y gets no second panel of itself.
    assert len(plot_sweep(frame, "alpha", "steered", hue="method").axes) == 1
    with pytest.raises(ValueError, match="not in the frame"):
        plot_sweep(frame, "alpha", "accuracy", n="n_items")


def test_score_axes_span_at_least_the_documented_minimum():
    # One question of 10,000 apart: narrow intervals, yet the axis keeps MIN_SPAN and holds every value.
    frame = pd.DataFrame({"alpha": [1, 5], "accuracy": [0.5000, 0.5001]})
    low, high = plot_sweep(frame, "alpha", "accuracy", n=10_000, baseline=0.5).axes[0].get_ylim()
    assert high - low >= MIN_SPAN - 1e-9 and low <= 0.49 and high >= 0.51
    low, high = plot_head_ablation(["a", "b"], [0.97, 0.98], baseline=0.97, n=10_000).axes[0].get_ylim()
    assert high - low >= MIN_SPAN - 1e-9 and high <= 1.0  # kept inside [0, 1]
    # Wide intervals widen the axis beyond the minimum instead of being cut.
    low, high = plot_head_ablation(["a"], [0.5], baseline=0.5, n=8).axes[0].get_ylim()
    (wilson_low,), (wilson_high,) = wilson_interval(np.array([0.5]), 8)
    assert low <= wilson_low and high >= wilson_high and high - low > MIN_SPAN


def test_head_ablation_shows_scores_n_and_the_baseline():
    fig = plot_head_ablation(["L1H2", "L3H4", "all"], [0.625, 0.25, 0.5], baseline=0.5, n=8)
    ax = fig.axes[0]
    [points] = ax.containers
    assert points.lines[0].get_ydata().tolist() == [0.625, 0.25, 0.5]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["L1H2", "L3H4", "all"]
    assert "95% Wilson interval, n=8" in points.get_label()
    [baseline] = _labelled(ax, "none")
    assert baseline.get_ydata()[0] == 0.5 and "0.500" in baseline.get_label()
    with pytest.raises(ValueError, match="2 labels for 3 scores"):
        plot_head_ablation(["a", "b"], [0.1, 0.2, 0.3], baseline=0.5, n=8)


def test_method_scores_refuse_misaligned_inputs():
    with pytest.raises(ValueError, match="one n per label"):
        plot_method_scores(["a", "b"], [0.1, 0.2], [(0.0, 0.2)], n=10)
    with pytest.raises(ValueError, match="steered fractions"):
        plot_method_scores(["a"], [0.1], [(0.0, 0.2)], n=10, steered=[0.5, 0.5])


def _pngs(paths: dict[str, Path]) -> None:
    for name, path in paths.items():
        assert path.name == f"{name}.png" and path.read_bytes()[:4] == b"\x89PNG"


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


def test_result_folder_figures_of_the_committed_reduced_run(tmp_path):
    before = _listing(REDUCED)
    paths = plot_result_folder(REDUCED, tmp_path / "figures")
    assert _listing(REDUCED) == before  # only read
    steerers = {f"heads_{p.name}" for p in (REDUCED / "steerers").iterdir()}
    scores = {"truthfulqa_mc1", "truthfulqa_mc2", *(f"{task}_accuracy" for task in TASKS)}
    judges = ("bleu-proxy", "rouge1-proxy", "info-proxy", "triggers")
    generation = {f"truthfulqa_gen_{name}" for name in judges}
    assert set(paths) == steerers | scores | generation
    assert len(steerers) == 8
    _pngs(paths)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(f"{n}.png" for n in paths)


@pytest.fixture(scope="module")
def tiny_results(tiny_model, data_dir, tmp_path_factory) -> Path:
    """A result folder of the tiny model: TruthfulQA MC (two alphas: two configs) and generation, and SST-2."""
    out = tmp_path_factory.mktemp("tiny-results")
    records = load_truthfulqa(data_dir)[:40]
    config = TruthfulQAConfig(k=4, alpha=5.0, back_steps=2, max_new_tokens=4, n_mc=8, n_generation=6)
    for alpha in (5.0, 10.0):
        context = EvalContext.create(tiny_model, out, progress=False)
        folds = TruthfulQAFolds(context, records=records, config=replace(config, alpha=alpha))
        run_mc(folds, methods=("none", "fasb"))
    run_generation(folds, methods=("none", "fasb"))
    context = EvalContext.create(tiny_model, out, data_dir=str(data_dir), progress=False)
    task = MultiChoiceConfig(n_pool=12, n_eval=8, k=4, alpha=5.0)
    run_multichoice(context, task="sst2", config=task, methods=("none", "fasb"))
    return out


def test_result_folder_figures_of_a_fresh_run_one_per_config(tiny_results, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(tiny_results, folder)
    paths = plot_result_folder(folder)
    assert all(path.parent == folder / "figures" for path in paths.values())
    heads = {f"heads_{p.name}" for p in (folder / "steerers").iterdir()}
    assert len(heads) == 3  # two TruthfulQA folds and the SST-2 pool (alpha does not change a Steerer)
    mc = {f"truthfulqa_{m}_{i}" for m in ("mc1", "mc2") for i in (1, 2)}  # one per alpha
    # No judges ran (none by default), so generation draws its trigger rates only.
    assert set(paths) == heads | mc | {"truthfulqa_gen_triggers", "sst2_accuracy"}
    _pngs(paths)


def test_result_folder_titles_name_the_config_of_each_figure(tiny_results, tmp_path, monkeypatch):
    titles = {}
    original = plt.close

    def keep_title(figure):
        if figure.axes:
            titles[len(titles)] = figure.axes[0].get_title()
        original(figure)

    monkeypatch.setattr(plt, "close", keep_title)
    plot_result_folder(tiny_results, tmp_path)
    mc = [title for title in titles.values() if title.startswith("TruthfulQA MC2")]
    assert len(mc) == 2 and {"alpha=5.0" in t for t in mc} == {True, False}
    assert any("alpha=10.0" in t for t in mc)


def test_an_unreadable_steerer_is_skipped_with_a_warning(tiny_results, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(tiny_results, folder)
    broken = min((folder / "steerers").iterdir())
    meta = json.loads((broken / "steerer.json").read_text())
    (broken / "steerer.json").write_text(json.dumps(meta | {"format_version": 99}))
    with pytest.warns(UserWarning, match=f"no heatmap for {broken}"):
        paths = plot_result_folder(folder, tmp_path / "figures")
    assert f"heads_{broken.name}" not in paths and "truthfulqa_mc2_1" in paths


def test_a_folder_that_is_not_a_result_folder_is_refused(tmp_path):
    with pytest.raises(ResultFolderError, match=rf"{tmp_path} is not a result folder.*no results\.jsonl"):
        plot_result_folder(tmp_path)
    missing = tmp_path / "nowhere"
    with pytest.raises(ResultFolderError, match="does not exist"):
        plot_result_folder(missing)
    assert not missing.exists() and not (tmp_path / "figures").exists()
