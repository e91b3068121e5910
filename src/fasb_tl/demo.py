"""``fasb demo``: the whole method end to end on the embedded model and the built-in dataset, offline.

Fits (or reuses) a Steerer on the training split, saves the head heatmap, prints unsteered / ITI / FASB
answers side by side for held-out questions, then the multiple-choice accuracy of each method.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fasb_tl.data import dataset_splits, extract_answer, generation_prompt, load_builtin
from fasb_tl.data.records import QARecord
from fasb_tl.generation import GenerationConfig, GenerationResult, generate
from fasb_tl.models import load_model, model_name
from fasb_tl.plotting import plot_head_accuracy, save_figure
from fasb_tl.scoring import ScoringConfig, score_choices
from fasb_tl.steering import Steerer, SteererFormatError, fit_steerer


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo. ``threshold`` 0.45 is below the 0.42-0.56 band where SmolLM2's probes sit in the
    few-shot generation format, so FASB triggers on some answers only (the paper's 0.6 fires on all)."""

    model: str = "smollm2-135m-instruct"
    k: int = 24
    alpha: float = 15.0
    threshold: float = 0.45
    back_steps: int = 10
    max_new_tokens: int = 50
    n_show: int = 4
    seed: int = 42
    out: str = "runs/demo"


def _steerer(model, records: list[QARecord], config: DemoConfig, folder: Path) -> tuple[Steerer, bool]:
    """Reuse the Steerer in ``folder`` when it was fitted with the same settings, else fit and save one."""
    split = dataset_splits("builtin", len(records), seed=config.seed)[0]
    try:
        cached = Steerer.load(folder, model=model)
        meta = cached.meta
        if (meta.model_name, meta.dataset, meta.split_seed, meta.fold, cached.k) == (
            model_name(model),
            "builtin",
            config.seed,
            0,
            config.k,
        ):
            return cached, True
    except (SteererFormatError, ValueError):
        pass
    steerer, _ = fit_steerer(model, records, split, k=config.k, seed=config.seed, dataset="builtin", fold=0)
    steerer.save(folder, overwrite=True)
    return steerer, False


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
    from the probes at the end of ``Q: {question} A:`` (the ``question`` protocol)."""
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
    table = {}
    for name, scoring in methods.items():
        results = score_choices(model, contexts, options, steerer, scoring)
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
    start = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"== fasb demo: {config.model}, built-in dataset, offline ==")
    model = load_model(config.model)
    records = load_builtin()
    split = dataset_splits("builtin", len(records), seed=config.seed)[0]
    steerer, reused = _steerer(model, records, config, out / "steerer")
    print(
        f"Steerer: {'reused' if reused else 'fitted'} {steerer.k} heads on {len(split.train)} train / "
        f"{len(split.val)} val questions (best head val accuracy {steerer.val_accuracy.max():.3f})"
    )
    heatmap = save_figure(plot_head_accuracy(steerer.val_accuracy, steerer.heads), out / "head_accuracy.png")

    held_out = [records[i] for i in split.test]
    shown = held_out[: config.n_show]
    prompts = [generation_prompt(r.question) for r in shown]
    base = GenerationConfig(
        alpha=config.alpha,
        threshold=config.threshold,
        back_steps=config.back_steps,
        max_new_tokens=config.max_new_tokens,
    )
    runs = {
        method: generate(
            model, prompts, steerer, GenerationConfig(**{**asdict(base), "method": method}), batch_size=4
        )
        for method in ("none", "iti", "fasb")
    }
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

    print(f"\n-- Multiple choice on {len(held_out)} held-out questions (sum of answer log-probs) --")
    table = multiple_choice(model, steerer, held_out, config)
    print(f"  {'method':>6}  {'accuracy':>8}  {'MC2':>6}  steered questions")
    for method, row in table.items():
        print(
            f"  {method:>6}  {row['accuracy']:8.3f}  {row['mc2']:6.3f}  {row['steered_questions']}/{len(held_out)}"
        )

    report = {
        "config": asdict(config),
        "answers": answers,
        "multiple_choice": table,
        "seconds": time.perf_counter() - start,
    }
    _write_json(out / "demo.json", report)
    print(
        f"\nOutputs in {out.resolve()}: steerer/ (Steerer), {heatmap.name} (head heatmap), demo.json (answers, MC)"
    )
    print(f"Done in {report['seconds']:.0f} s.")
    return out


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
