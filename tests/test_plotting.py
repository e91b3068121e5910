"""The figure helpers on synthetic data, and render_backtrack on hand-made results."""

from __future__ import annotations

import os
import subprocess
import sys

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from fasb_tl.generation import GenerationResult
from fasb_tl.plotting import (
    plot_backend_agreement,
    plot_direction_cosines,
    plot_head_ablation,
    plot_layer_accuracy,
    plot_projection_histograms,
    plot_sweep,
    plot_trigger_histogram,
    render_backtrack,
    save_figure,
    top_head_set,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_layer_accuracy_lines_are_max_and_mean():
    accuracy = torch.tensor([[0.5, 0.7, 0.6], [0.9, 0.5, 0.4]])
    fig = plot_layer_accuracy(accuracy)
    best, mean = fig.axes[0].lines[:2]
    assert best.get_ydata().tolist() == pytest.approx([0.7, 0.9])
    assert mean.get_ydata().tolist() == pytest.approx([0.6, 0.6])


def test_top_head_set_breaks_ties_as_fitting_does():
    accuracy = torch.tensor([[0.8, 0.6], [0.8, 0.9]])
    assert top_head_set(accuracy, 2, tie_break="lowest") == {(1, 1), (0, 0)}
    assert top_head_set(accuracy, 2) == {(1, 1), (1, 0)}


def test_backend_agreement_title_reports_mean_diff_and_overlap():
    torch.manual_seed(0)
    acc_a = torch.rand(4, 3)
    acc_b = acc_a.clone()
    acc_b[0, 0] += 0.12  # one head moves: mean |diff| = 0.12 / 12 = 0.01
    fig = plot_backend_agreement(acc_a, acc_b, labels=("torch", "sklearn"), k=3)
    title = fig.axes[0].get_title()
    assert "mean |diff| 0.0100" in title
    overlap = len(top_head_set(acc_a, 3) & top_head_set(acc_b, 3))
    assert f"top-3 overlap {overlap}/3" in title
    assert fig.axes[0].get_xlabel().startswith("torch")
    assert fig.axes[0].get_ylabel().startswith("sklearn")


def test_backend_agreement_rejects_mismatched_grids():
    with pytest.raises(ValueError, match="shape"):
        plot_backend_agreement(torch.zeros(2, 3), torch.zeros(3, 2))


def test_projection_histograms_one_panel_per_head():
    true = [torch.randn(20) + 2 for _ in range(3)]
    false = [torch.randn(15) for _ in range(3)]
    fig = plot_projection_histograms(true, false, ["L1H2", "L3H4", "L5H6"])
    assert [ax.get_title() for ax in fig.axes] == ["L1H2", "L3H4", "L5H6"]
    # Each panel's bars count every projection once.
    heights = sum(patch.get_height() for patch in fig.axes[0].patches)
    assert heights == 35
    with pytest.raises(ValueError, match="one title per panel"):
        plot_projection_histograms(true, false, ["only one"])


def test_direction_cosines_labels_and_values():
    directions = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    heads = torch.tensor([[2, 1], [5, 0], [7, 3]])
    fig = plot_direction_cosines(directions, heads)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["L2H1", "L5H0", "L7H3"]
    cosines = ax.images[0].get_array()
    assert cosines[0, 2] == pytest.approx(-1.0)
    assert cosines[0, 1] == pytest.approx(0.0)
    assert cosines[1, 1] == pytest.approx(1.0)


def test_head_ablation_points_follow_the_scores():
    fig = plot_head_ablation(["L1H2", "L3H4", "all"], [0.625, 0.25, 0.5], baseline=0.5, n=8)
    ax = fig.axes[0]
    assert ax.containers[0].lines[0].get_ydata().tolist() == [0.625, 0.25, 0.5]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["L1H2", "L3H4", "all"]
    with pytest.raises(ValueError, match="2 labels for 3 scores"):
        plot_head_ablation(["a", "b"], [0.1, 0.2, 0.3], baseline=0.5, n=8)


def test_sweep_draws_one_line_per_hue_value():
    frame = pd.DataFrame(
        {
            "alpha": [5, 1, 5, 1],
            "accuracy": [0.6, 0.4, 0.7, 0.5],
            "method": ["iti", "iti", "fasb", "fasb"],
        }
    )
    fig = plot_sweep(frame, "alpha", "accuracy", hue="method", n=20)
    lines = fig.axes[0].containers
    assert sorted(line.get_label() for line in lines) == ["method=fasb, n=20", "method=iti, n=20"]
    assert all(line.lines[0].get_xdata().tolist() == [1, 5] for line in lines)  # sorted by x
    single = plot_sweep(frame, "alpha", "accuracy", title="accuracy vs alpha").axes[0]
    assert len(single.containers) == 1 and single.get_title() == "accuracy vs alpha"
    with pytest.raises(ValueError, match="not in the frame"):
        plot_sweep(frame, "alpha", "mc2")


def test_trigger_histogram_counts_only_triggered_answers():
    results = [
        GenerationResult(text="", token_ids=[], triggered=True, trigger_step=12, removed_token_ids=[1] * 10),
        GenerationResult(text="", token_ids=[], triggered=True, trigger_step=15, removed_token_ids=[1] * 10),
        GenerationResult(text="", token_ids=[]),
    ]
    fig = plot_trigger_histogram(results)
    steps, removed = fig.axes
    assert sum(p.get_height() for p in steps.patches) == 2
    assert sum(p.get_height() for p in removed.patches) == 2
    assert fig.get_suptitle() == "2 of 3 answers triggered"
    quiet = plot_trigger_histogram(results[2:])
    assert len(quiet.axes) == 2 and quiet.axes[0].texts[0].get_text() == "no triggers"


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_render_backtrack_marks_removed_tokens(tiny_model):
    tokenizer = tiny_model.tokenizer
    kept, removed, regenerated = "No, it", " is a myth", " does not."
    token_ids = _ids(tokenizer, kept + regenerated)
    result = GenerationResult(
        text=kept + regenerated,
        token_ids=token_ids + [tokenizer.eos_token_id],
        triggered=True,
        trigger_step=len(kept) + len(removed),
        removed_token_ids=_ids(tokenizer, removed),
        steered_from=len(kept),
    )
    assert render_backtrack(result, tokenizer) == "No, it [-is a myth-] does not."


def test_render_backtrack_without_trigger_or_kept_tokens(tiny_model):
    tokenizer = tiny_model.tokenizer
    plain = GenerationResult(text="Yes.", token_ids=_ids(tokenizer, "Yes."))
    assert render_backtrack(plain, tokenizer) == "Yes."
    everything = GenerationResult(
        text="No.",
        token_ids=_ids(tokenizer, "No."),
        triggered=True,
        trigger_step=4,
        removed_token_ids=_ids(tokenizer, "Yes."),
        steered_from=0,
    )
    assert render_backtrack(everything, tokenizer) == "[-Yes.-] No."


def test_render_backtrack_cuts_the_final_text_at_end(tiny_model):
    tokenizer = tiny_model.tokenizer
    result = GenerationResult(
        text="A: No.\n\nQ: Next?",
        token_ids=_ids(tokenizer, "A: No.\n\nQ: Next?"),
        triggered=True,
        trigger_step=10,
        removed_token_ids=_ids(tokenizer, " Yes.\n\nQ: Why"),
        steered_from=2,
    )
    assert render_backtrack(result, tokenizer, end="\nQ:") == "A: [-Yes.\n\nQ: Why-] No."
    assert render_backtrack(result, tokenizer).endswith("No.\n\nQ: Next?")
    untriggered = GenerationResult(text="\nA: Yes.\n\nQ: Next?", token_ids=[])
    assert render_backtrack(untriggered, tokenizer, end="\nQ:") == "A: Yes."


def test_save_figure_writes_png(tmp_path):
    path = save_figure(plot_layer_accuracy(torch.rand(3, 2)), tmp_path / "sub" / "layers.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert not list(path.parent.glob(".*"))


def test_importing_plotting_leaves_the_matplotlib_backend_alone(tmp_path):
    code = (
        "import matplotlib; matplotlib.use('svg'); import fasb_tl.plotting; "
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
