"""``fasb demo``: the whole method end to end on the embedded model and the built-in dataset, offline.

Fits (or reuses) a Steerer on the training split, saves the head heatmap, prints unsteered / ITI / FASB
answers side by side for held-out questions, then the multiple-choice accuracy of each method.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from fasb_tl._io import atomic_write_text
from fasb_tl.data import dataset_splits, extract_answer, generation_prefix, generation_prompt, load_builtin
from fasb_tl.data.records import QARecord
from fasb_tl.fitting import fit_steerer
from fasb_tl.generation import GenerationConfig, GenerationResult, generate_many
from fasb_tl.models import load_model, model_name
from fasb_tl.plotting import plot_head_accuracy, save_figure
from fasb_tl.prefix import build_prefix_cache
from fasb_tl.run_config import RunConfig
from fasb_tl.scoring import ScoringConfig, score_choices_many
from fasb_tl.steering import ModelMismatchError, Steerer, SteererFormatError


@dataclass(frozen=True)
class DemoConfig(RunConfig):
    """Settings of the demo: those of :class:`RunConfig` and the ones below. ``threshold`` 0.45 is below the
    0.42-0.56 band where SmolLM2's probes sit in the few-shot generation format, so FASB triggers on some
    answers only (the paper's 0.6 fires on all)."""

    threshold: float = 0.45
    n_show: int = 4
    batch_size: int = 32
    out: str = "runs/demo"


def _steerer(model, records: list[QARecord], config: DemoConfig, folder: Path) -> tuple[Steerer, str]:
    """Reuse the Steerer in ``folder`` when it was fitted with the same settings, else fit and save one;
    returns it with a line saying which happened and why."""
    split = dataset_splits("builtin", len(records), seed=config.seed)[0]
    reason = f"no Steerer in {folder} yet"
    if folder.exists():
        try:
            cached = Steerer.load(folder, model=model)
        except (SteererFormatError, ModelMismatchError) as err:
            reason = f"the folder {folder} holds no usable Steerer ({err})"
        else:
            meta = cached.meta
            wanted = (model_name(model), "builtin", config.seed, 0, config.k, "mass_mean", "released")
            if (
                meta.model_name,
                meta.dataset,
                meta.split_seed,
                meta.fold,
                cached.k,
                meta.direction,
                meta.head_selection,
            ) == wanted:
                return (
                    cached,
                    f"reused from {folder} (an earlier run fitted it with these settings; delete it to refit)",
                )
            reason = f"the Steerer in {folder} was fitted with other settings"
    steerer = fit_steerer(model, records, split, k=config.k, seed=config.seed, dataset="builtin", fold=0)
    steerer.save(folder, overwrite=True)
    return steerer, f"fitted and saved to {folder} ({reason}; the next run reuses it)"


def _describe(result: GenerationResult, tokenizer) -> str:
    if not result.triggered:
        return "no trigger"
    removed = tokenizer.decode(result.removed_token_ids, skip_special_tokens=True)
    return (
        f"triggered after {result.trigger_step} tokens at p_true {result.p_true_at_trigger:.2f}, "
        f"strength {result.strength:.2f}, removed {result.n_removed} tokens: [{removed.strip()}]"
    )


def multiple_choice(model, steerer: Steerer, records: list[QARecord], config: DemoConfig) -> dict[str, dict]:
    """Accuracy (top-scored answer is true) and MC2 of none / ITI / FASB, where FASB decides once per question
    from the probes at the end of ``Q: {question} A:`` (the ``question`` protocol). Every answer is scored
    once unsteered; ITI and FASB re-score only the answers they steer."""
    contexts = [f"Q: {r.question} A:" for r in records]
    options = [[" " + answer for answer, _ in r.answers] for r in records]
    labels = [torch.tensor([label for _, label in r.answers]) for r in records]
    methods = {
        "none": ScoringConfig(method="none"),
        "iti": ScoringConfig(method="iti", alpha=config.alpha),
        "fasb": ScoringConfig(
            method="fasb", protocol="question", alpha=config.alpha, threshold=config.threshold
        ),
    }
    scored = score_choices_many(model, contexts, options, steerer, methods, batch_size=config.batch_size)
    table = {}
    for name, results in scored.items():
        correct = [float(y[r.scores.argmax()] == 1) for r, y in zip(results, labels)]
        mc2 = [float(torch.softmax(r.scores, dim=0)[y == 1].sum()) for r, y in zip(results, labels)]
        table[name] = {
            "accuracy": sum(correct) / len(correct),
            "mc2": sum(mc2) / len(mc2),
            "steered_questions": sum(any(r.triggered) for r in results),
        }
    return table


def run_demo(config: DemoConfig | None = None) -> Path:
    """Run the demo, print its report, and return the output folder."""
    config = config or DemoConfig()
    clock = _StageClock()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"== fasb demo: {config.model}, built-in dataset, offline ==")
    model = load_model(config.model)
    clock.lap("load model")
    records = load_builtin()
    split = dataset_splits("builtin", len(records), seed=config.seed)[0]
    steerer, how = _steerer(model, records, config, out / "steerer")
    print(
        f"Steerer: {steerer.k} heads from {len(split.train)} train / {len(split.val)} val questions "
        f"(best head val accuracy {steerer.val_accuracy.max():.3f}), {how}"
    )
    heatmap = save_figure(plot_head_accuracy(steerer.val_accuracy, steerer.heads), out / "head_accuracy.png")
    clock.lap("Steerer + heatmap")

    held_out = [records[i] for i in split.test]
    shown = held_out[: config.n_show]
    prompts = [generation_prompt(r.question) for r in shown]
    base = GenerationConfig(
        alpha=config.alpha,
        threshold=config.threshold,
        back_steps=config.back_steps,
        max_new_tokens=config.max_new_tokens,
    )
    # The three methods' rows decode as one batch, on top of the instruction + primer computed once.
    runs = generate_many(
        model,
        prompts,
        steerer,
        {method: replace(base, method=method) for method in ("none", "iti", "fasb")},
        prefix=build_prefix_cache(model, generation_prefix()),
        batch_size=3 * len(prompts),
    )
    print(
        f"\n-- Held-out answers (alpha {config.alpha}, threshold {config.threshold}, back_steps {config.back_steps}) --"
    )
    answers = []
    for i, record in enumerate(shown):
        print(f"\nQ: {record.question}")
        row = {"question": record.question}
        for method, results in runs.items():
            text = extract_answer(results[i].text)
            note = f"   ({_describe(results[i], model.tokenizer)})" if method == "fasb" else ""
            print(f"  {method:>5}: {text}{note}")
            row[method] = text
        row["fasb_triggered"] = runs["fasb"][i].triggered
        answers.append(row)
    clock.lap("generation")

    print(f"\n-- Multiple choice on {len(held_out)} held-out questions (sum of answer log-probs) --")
    table = multiple_choice(model, steerer, held_out, config)
    print(f"  {'method':>6}  {'accuracy':>8}  {'MC2':>6}  steered questions")
    for method, row in table.items():
        print(
            f"  {method:>6}  {row['accuracy']:8.3f}  {row['mc2']:6.3f}  {row['steered_questions']}/{len(held_out)}"
        )
    clock.lap("multiple choice")

    report = {
        "config": asdict(config),
        "answers": answers,
        "multiple_choice": table,
        "seconds": clock.total(),
        "stage_seconds": clock.stages,
    }
    atomic_write_text(out / "demo.json", json.dumps(report, indent=2) + "\n")
    print(
        f"\nOutputs in {out.resolve()}: steerer/ (Steerer), {heatmap.name} (head heatmap), demo.json (answers, MC)"
    )
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in clock.stages.items())
    print(f"Done in {report['seconds']:.0f} s ({stages}).")
    return out


class _StageClock:
    """Wall time per stage of the demo, so its report says where the time went."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = now - self.last
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.start
