"""Regenerate every figure of the notebooks as PNG files, without running the notebooks.

    python analysis/make_figures.py                 # full sizes into analysis/figures/ (long on a CPU)
    python analysis/make_figures.py --fast          # the notebooks' FAST sizes, into runs/figures-fast/
    python analysis/make_figures.py --only heads    # one or more groups: heads, ablation, sweeps, triggers

Everything is computed on the embedded SmolLM2-135M-Instruct and the built-in dataset (fold 0), with the
settings the notebooks use: K = 24 heads, alpha 15, threshold 0.45, back_steps 10.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.figure import Figure

from fasb_tl import HeadProbes, Steerer, collect_head_activations, load_model
from fasb_tl.data import (
    QARecord,
    Split,
    dataset_splits,
    generation_prefix,
    generation_prompt,
    load_builtin,
    probe_bank,
    tuning_bank,
)
from fasb_tl.fitting import model_meta, steerer_from_activations
from fasb_tl.generation import GenerationConfig, generate
from fasb_tl.plotting import (
    plot_backend_agreement,
    plot_direction_cosines,
    plot_head_ablation,
    plot_head_accuracy,
    plot_layer_accuracy,
    plot_projection_histograms,
    plot_sweep,
    plot_trigger_histogram,
    save_figure,
)
from fasb_tl.prefix import build_prefix_cache
from fasb_tl.scoring import ChoiceScores, ScoringConfig, score_choices, score_choices_many

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

ROOT = Path(__file__).resolve().parents[1]
SEED, K, ALPHA, THRESHOLD, BACK_STEPS = 42, 24, 15.0, 0.45, 10
VARIANTS = {"iti": ("iti", "paper"), "fasb/question": ("fasb", "question"), "fasb/paper": ("fasb", "paper")}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much data the figures use; ``FAST`` matches the notebooks' FAST mode."""

    record_stride: int = 1
    n_ablate: int = 8
    n_mc: int | None = None
    n_generate: int = 16
    max_new_tokens: int = 50
    alphas: tuple[float, ...] = (2.0, 5.0, 10.0, 15.0, 25.0)
    thresholds: tuple[float, ...] = (0.4, 0.45, 0.5, 0.55, 0.6)
    back_steps: tuple[int, ...] = (0, 2, 5, 10, 20)
    ks: tuple[int, ...] = (4, 8, 16, 24, 48)


FULL = Sizes()
FAST = Sizes(
    record_stride=4,
    n_ablate=3,
    n_mc=8,
    n_generate=3,
    max_new_tokens=24,
    alphas=(5.0, 15.0),
    thresholds=(0.45, 0.6),
    back_steps=(5, 10),
    ks=(8, 24),
)


@dataclasses.dataclass
class Fit:
    """Probe activations and the fitted Steerer (with the largest K any figure needs)."""

    model: TransformerBridge
    records: list[QARecord]
    split: Split
    acts: torch.Tensor
    y_train: torch.Tensor
    y_val: torch.Tensor
    largest: Steerer
    probes: HeadProbes

    @property
    def steerer(self) -> Steerer:
        """The K-head Steerer the notebooks use."""
        return select_heads(self.largest, slice(0, K))

    @property
    def majority(self) -> float:
        """The share of the larger class among the validation answers: a constant probe's accuracy."""
        rate = self.y_val.float().mean().item()
        return max(rate, 1 - rate)

    def held_out(self, sizes: Sizes) -> list[QARecord]:
        """Test-fold questions for multiple choice and generation."""
        return [self.records[i] for i in self.split.test][: sizes.n_mc]


def select_heads(steerer: Steerer, index: slice) -> Steerer:
    """The Steerer restricted to some of its heads; probes, directions and scales stay as fitted."""
    tensors = steerer.tensors()
    del tensors["val_accuracy"]
    return dataclasses.replace(steerer, **{name: tensor[index] for name, tensor in tensors.items()})


def fit(model: TransformerBridge, sizes: Sizes) -> Fit:
    """Activations of the probe and tuning banks, probes on every head, and the Steerer."""
    records = load_builtin()[:: sizes.record_stride]
    split = dataset_splits("builtin", len(records), seed=SEED)[0]
    train, val = probe_bank([records[i] for i in split.train]), probe_bank([records[i] for i in split.val])
    prompts = train.prompts + val.prompts + tuning_bank(records, seed=SEED)
    acts = collect_head_activations(model, prompts, batch_size=32)
    n_train, n_probe = len(train.prompts), len(train.prompts) + len(val.prompts)
    y_train, y_val = train.labels, val.labels
    meta = model_meta(
        model,
        "mass_mean",
        dataset="builtin",
        split_seed=SEED,
        fold=0,
        n_train=len(split.train),
        n_val=len(split.val),
    )
    largest = steerer_from_activations(
        acts[:n_train],
        y_train,
        acts[n_train:n_probe],
        y_val,
        acts[n_probe:],
        meta,
        k=max((*sizes.ks, K)),
        seed=SEED,
    )
    probes = largest.fit_report
    return Fit(model, records, split, acts[:n_probe], y_train, y_val, largest, probes)


def head_figures(state: Fit, sizes: Sizes) -> dict[str, Figure]:
    """Notebook 01: heatmap, accuracy by layer, backend agreement, projections, direction cosines."""
    steerer, acts, n_train = state.steerer, state.acts, len(state.y_train)
    reference = HeadProbes(backend="sklearn", random_state=SEED).fit(
        acts[:n_train], state.y_train, acts[n_train:], state.y_val
    )
    labels = torch.cat([state.y_train, state.y_val])
    true, false, titles = [], [], []
    for j, (layer, head) in enumerate(steerer.heads[:3].tolist()):
        projection = acts[:, layer, head] @ steerer.directions[j]
        true.append(projection[labels == 1])
        false.append(projection[labels == 0])
        titles.append(f"L{layer}H{head} (val acc {steerer.val_accuracy[layer, head]:.2f})")
    order = torch.argsort(steerer.heads[:, 0] * steerer.meta.n_heads + steerer.heads[:, 1])
    source = {"majority": state.majority, "model": steerer.meta.model_name, "dataset": "builtin, fold 0"}
    return {
        "head_accuracy": plot_head_accuracy(steerer.val_accuracy, steerer.heads, **source),
        "layer_accuracy": plot_layer_accuracy(state.probes.val_accuracy_, **source),
        "backend_agreement": plot_backend_agreement(state.probes.val_accuracy_, reference.val_accuracy_, k=K),
        "projection_histograms": plot_projection_histograms(true, false, titles),
        "direction_cosines": plot_direction_cosines(steerer.directions[order], steerer.heads[order]),
    }


def mc_items(records: list[QARecord]) -> tuple[list[str], list[list[str]]]:
    """Multiple-choice contexts and answer options, as in the notebooks."""
    return [f"Q: {r.question} A:" for r in records], [[" " + a for a, _ in r.answers] for r in records]


def summary(results: list[ChoiceScores], records: list[QARecord]) -> dict[str, float]:
    """Accuracy (a true answer scores highest) and the fraction of steered answer choices."""
    hits = [record.answers[int(r.scores.argmax())][1] for r, record in zip(results, records)]
    steered = [t for r in results for t in r.triggered]
    return {"accuracy": sum(hits) / len(hits), "steered": sum(steered) / len(steered)}


def unsteered_accuracy(state: Fit, sizes: Sizes) -> float:
    """MC accuracy of the held-out questions without steering (the `none` baseline)."""
    held_out = state.held_out(sizes)
    none = score_choices(state.model, *mc_items(held_out), None, ScoringConfig(method="none"))
    return summary(none, held_out)["accuracy"]


def ablation_figures(state: Fit, sizes: Sizes) -> dict[str, Figure]:
    """Notebook 01: MC accuracy from steering each top head alone (and all K), against no steering."""
    held_out = state.held_out(sizes)
    contexts, options = mc_items(held_out)
    baseline = unsteered_accuracy(state, sizes)
    steerer = state.steerer
    candidates = {
        f"L{layer}H{head}": select_heads(steerer, slice(i, i + 1))
        for i, (layer, head) in enumerate(steerer.heads[: sizes.n_ablate].tolist())
    }
    candidates[f"all {K}"] = steerer
    scores = {}
    for label, candidate in candidates.items():
        steered = score_choices(
            state.model, contexts, options, candidate, ScoringConfig(method="iti", alpha=ALPHA)
        )
        scores[label] = summary(steered, held_out)["accuracy"]
    figure = plot_head_ablation(list(scores), list(scores.values()), baseline, n=len(held_out))
    return {"head_ablation": figure}


def sweep(state: Fit, sizes: Sizes, grid: dict, variants: list[str], candidate: Steerer) -> pd.DataFrame:
    """Accuracy and steered fraction of each variant at each (parameter, value) of ``grid``."""
    held_out = state.held_out(sizes)
    defaults = {"alpha": ALPHA, "threshold": THRESHOLD, "back_steps": BACK_STEPS}
    configs = {}
    for parameter, values in grid.items():
        for value in values:
            for name in variants:
                method, protocol = VARIANTS[name]
                # K is not a scoring setting: it changes the Steerer, passed as `candidate`.
                settings = {**defaults, parameter: value} if parameter in defaults else defaults
                configs[(parameter, value, name)] = ScoringConfig(
                    method=method, protocol=protocol, **settings
                )
    named = {f"{name} {parameter}={value}": config for (parameter, value, name), config in configs.items()}
    scored = score_choices_many(state.model, *mc_items(held_out), candidate, named)
    rows = [
        {"parameter": p, "value": v, "variant": n, **summary(scored[f"{n} {p}={v}"], held_out)}
        for p, v, n in configs
    ]
    return pd.DataFrame(rows)


def sweep_figures(state: Fit, sizes: Sizes) -> dict[str, Figure]:
    """Notebook 02: MC accuracy against alpha, threshold, back_steps and K; steered fraction by threshold."""
    steerer = state.steerer
    frames = [
        sweep(state, sizes, {"alpha": sizes.alphas, "threshold": sizes.thresholds}, list(VARIANTS), steerer),
        sweep(state, sizes, {"back_steps": sizes.back_steps}, ["fasb/paper"], steerer),
    ]
    for k in sizes.ks:
        frames.append(
            sweep(
                state, sizes, {"K": [k]}, ["iti", "fasb/question"], select_heads(state.largest, slice(0, k))
            )
        )
    sweeps = pd.concat(frames, ignore_index=True)
    held_out = state.held_out(sizes)
    baseline = unsteered_accuracy(state, sizes)
    figures = {}
    for parameter in ["alpha", "threshold", "back_steps", "K"]:
        frame = sweeps[sweeps.parameter == parameter].rename(columns={"value": parameter})
        title = f"MC accuracy vs {parameter}"
        figures[f"sweep_{parameter.lower()}"] = plot_sweep(
            frame, parameter, "accuracy", "variant", title, n=len(held_out), baseline=baseline
        )
    gated = sweeps[(sweeps.parameter == "threshold") & (sweeps.variant != "iti")]
    figures["sweep_threshold_steered"] = plot_sweep(
        gated.rename(columns={"value": "threshold"}),
        "threshold",
        "steered",
        "variant",
        "Fraction of answer choices steered",
        n=sum(len(options) for options in mc_items(held_out)[1]),  # the fraction is over answer choices
    )
    return figures


def trigger_figures(state: Fit, sizes: Sizes) -> dict[str, Figure]:
    """Notebook 02: when FASB triggers and how many tokens it removes, on held-out questions."""
    shown = [state.records[i] for i in state.split.test][: sizes.n_generate]
    config = GenerationConfig(
        alpha=ALPHA, threshold=THRESHOLD, back_steps=BACK_STEPS, max_new_tokens=sizes.max_new_tokens
    )
    results = generate(
        state.model,
        [generation_prompt(r.question) for r in shown],
        state.steerer,
        config,
        prefix=build_prefix_cache(state.model, generation_prefix()),
    )
    return {"trigger_histogram": plot_trigger_histogram(results)}


GROUPS: dict[str, Callable[[Fit, Sizes], dict[str, Figure]]] = {
    "heads": head_figures,
    "ablation": ablation_figures,
    "sweeps": sweep_figures,
    "triggers": trigger_figures,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="the notebooks' small FAST sizes")
    parser.add_argument("--only", nargs="+", choices=list(GROUPS), default=list(GROUPS), help="figure groups")
    parser.add_argument(
        "--out", type=Path, help="output folder (default analysis/figures, or runs/figures-fast with --fast)"
    )
    parser.add_argument("--tag", default="smollm2", help="suffix of the file names (default smollm2)")
    args = parser.parse_args(argv)
    sizes = FAST if args.fast else FULL
    out = args.out or (ROOT / "runs" / "figures-fast" if args.fast else ROOT / "analysis" / "figures")
    start = time.perf_counter()
    state = fit(load_model(), sizes)
    for group in args.only:
        for name, figure in GROUPS[group](state, sizes).items():
            print(save_figure(figure, out / f"{name}_{args.tag}.png"))
            plt.close(figure)
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
