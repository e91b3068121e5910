"""Reproduce the paper's tables on a model we can load (default: the embedded SmolLM2-135M-Instruct).

    python analysis/reproduce_tables.py                      # full run, resumable (hours on 2 CPU cores)
    python analysis/reproduce_tables.py --report-only        # rebuild the Markdown from the rows so far

Runs, into ``results/<model>/`` (a resumable result folder): TruthfulQA multiple choice on all 817 questions
with every method under both protocols; the six multiple-choice tasks at default sizes; TruthfulQA generation
on a seeded subset of 200 questions. Then writes ``results/<model>.md`` with the paper's tables (Table 1, the
six-task table, the ablation table), the exact command, the wall time and the git revision. Whatever the
numbers are, they are reported as they came out; rows still missing are listed as missing.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fasb_tl._io import atomic_write_text
from fasb_tl._version import __version__
from fasb_tl.evaluation.multichoice import MultiChoiceConfig
from fasb_tl.evaluation.multichoice_data import TASKS
from fasb_tl.evaluation.results import ResultStore
from fasb_tl.evaluation.runner import EvalPlan, run_plan
from fasb_tl.evaluation.tables import (
    METHOD_ORDER,
    Column,
    multichoice_columns,
    multichoice_table,
    to_markdown,
    truthfulqa_columns,
    truthfulqa_table,
    uncertainty_table,
)
from fasb_tl.evaluation.truthfulqa import TruthfulQAConfig
from fasb_tl.evaluation.variants import row_variant
from fasb_tl.methods import CONTROLLED_METHODS, GATED_METHODS, MONITORING_METHODS
from fasb_tl.models import load_model

METHODS = METHOD_ORDER


def git_revision() -> str:
    """The checkout's commit (with ``-dirty`` when there are uncommitted changes)."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def plans(args: argparse.Namespace) -> list[EvalPlan]:
    """The main tables' plans, each run into ``args.out``; cheapest first, so an interrupted run still has
    whole tables: the six tasks, TruthfulQA MC (with the detector comparison), generation."""
    tqa = TruthfulQAConfig(**steering(args), n_mc=args.n_mc, n_generation=args.n_gen)
    mc = MultiChoiceConfig(**steering(args), n_eval=args.n_items, n_pool=args.n_pool)
    common = {"methods": METHODS, "truthfulqa": tqa, "multichoice": mc}
    return [
        EvalPlan(tasks=list(TASKS), **common),
        EvalPlan(tasks=["truthfulqa"], generation=False, detection=True, **common),
        EvalPlan(tasks=["truthfulqa"], mc=False, **common),
    ]


def variant_plans(args: argparse.Namespace) -> list[EvalPlan]:
    """The controls and the calibrated threshold, run into ``args.variants_out`` on a seeded subset of the
    questions with their own unsteered and real-direction rows, so every comparison is on the same questions.
    A subset because each control multiplies the cost of every steered row (all of them at full size would be
    about eight hours on 2 CPU cores); ``--variant-n-mc 817`` etc. run them at full size."""
    if not args.controls and args.thresholds == ["fixed"]:
        return []
    tqa = TruthfulQAConfig(**steering(args), n_mc=args.variant_n_mc, n_generation=args.variant_n_gen)
    mc = MultiChoiceConfig(**steering(args), n_eval=args.variant_n_items, n_pool=args.n_pool)
    # CAA has its own vector and no threshold: no variant applies to it, and its plain rows are in the main run.
    common = {
        "methods": [m for m in METHODS if m != "caa"],
        "truthfulqa": tqa,
        "multichoice": mc,
        "controls": args.controls,
        "n_random": args.n_random,
        "thresholds": args.thresholds,
    }
    plans = []
    six = [t for t in args.variant_tasks if t in TASKS]
    if six:
        plans.append(EvalPlan(tasks=six, **common))
    if "truthfulqa" in args.variant_tasks:
        plans += [
            EvalPlan(tasks=["truthfulqa"], generation=False, **common),
            EvalPlan(tasks=["truthfulqa"], mc=False, **common),
        ]
    return plans


def steering(args: argparse.Namespace) -> dict:
    return {"k": args.k, "alpha": args.alpha, "threshold": args.threshold, "back_steps": args.back_steps}


def ablation_table(tqa: pd.DataFrame) -> pd.DataFrame:
    """Table 3's layout: True*Info, MC1, MC2 for each variant (paper protocol for MC)."""
    keep = [c for c in tqa.columns if c.startswith("True*Info") or c in ("MC1 (paper)", "MC2 (paper)")]
    labels = {
        "none": "No steering",
        "iti": "All fixed (ITI)",
        "question": "After question (gate once)",
        "no_backtrack": "w/o backtracking",
        "fixed": "w/o adaptive strength",
        "fasb": "FASB (full)",
    }
    frame = tqa.loc[[m for m in tqa.index if m != "caa"], keep].copy()
    frame.index = [labels.get(i, i) for i in frame.index]
    return frame


def missing_rows(rows: list[dict]) -> list[str]:
    present = {(r["task"], r["method"]) for r in rows if not row_variant(r)}
    expected = []
    for task in ["truthfulqa-mc", *TASKS]:
        for method in METHODS:
            monitored = method in MONITORING_METHODS
            expected += (
                [(task, f"{method}/{p}") for p in ("paper", "question")] if monitored else [(task, method)]
            )
    expected += [("truthfulqa-gen", m) for m in METHODS]
    return [f"{task} {method}" for task, method in expected if (task, method) not in present]


def settings_line(rows: list[dict]) -> str:
    """The settings as stored in the rows (so a --report-only rebuild states what was actually run)."""
    tqa = next((r["config"] for r in rows if r["task"].startswith("truthfulqa")), None)
    mc = next((r["config"] for r in rows if r["task"] in TASKS), None)
    parts = []
    if tqa:
        mc_size = "all 817" if tqa["n_mc"] is None else tqa["n_mc"]
        parts.append(
            f"TruthfulQA: K={tqa['k']}, alpha={tqa['alpha']}, threshold={tqa['threshold']} (on mean P(true)),"
            f" back_steps={tqa['back_steps']}, {tqa['direction']} directions,"
            f" {tqa['history']} history (iti: {tqa.get('iti_history', 'reference')}),"
            f" top-K ties {tqa.get('tie_break', 'lowest')}, probes {tqa['backend']}, greedy,"
            f" {tqa['max_new_tokens']} new tokens, {tqa['n_folds']} folds / val {tqa['val_fraction']} /"
            f" seed {tqa['seed']}; MC on {mc_size} questions; generation on a seeded subset of"
            f" {tqa['n_generation']} questions"
        )
    if mc:
        parts.append(
            f"six tasks: K={mc['k']}, alpha={mc['alpha']}, threshold={mc['threshold']},"
            f" {mc['n_eval']} evaluation items and {mc['n_pool']} pool items each (seed {mc['seed']})"
        )
    return "- Settings: " + "; ".join(parts) + "." if parts else "- Settings: no rows yet."


def trigger_table(rows: list[dict]) -> pd.DataFrame:
    """How often each method steered and what it did to answer likelihoods (TruthfulQA MC, fold-averaged)."""
    out = {}
    for row in rows:
        if row["task"] != "truthfulqa-mc" or row_variant(row):
            continue
        entry = out.setdefault(
            row["method"], {"steered options (%)": [], "Δ loglik true": [], "Δ loglik false": []}
        )
        entry["steered options (%)"].append(100 * row["steered_fraction"])
        entry["Δ loglik true"].append(row["loglik_change_true"])
        entry["Δ loglik false"].append(row["loglik_change_false"])
    return pd.DataFrame({m: {k: float(np.mean(v)) for k, v in e.items()} for m, e in out.items()}).T


def loglik_table(rows: list[dict]) -> pd.DataFrame:
    """Mean change of the gold option's log-likelihood under each method, per six-task task (paper protocol)."""
    table: dict[str, dict[str, float]] = {}
    for row in rows:
        plain = not row_variant(row) and not row["method"].endswith("/question")
        if row["task"] in TASKS and "loglik_change_gold" in row and plain:
            method = row["method"].removesuffix("/paper")
            table.setdefault(method, {})[row["task"]] = row["loglik_change_gold"]
    frame = pd.DataFrame(table).T
    return frame.reindex([m for m in METHODS if m in frame.index], columns=[t for t in TASKS if t in frame])


def paper_mc_means(rows: list[dict], label: str, field: str) -> dict[str, float]:
    """Per method (``/paper`` dropped; ``/question`` rows skipped): the mean of ``field`` over the TruthfulQA MC
    rows of variant ``label``, across folds and random seeds."""
    values: dict[str, list[float]] = {}
    for r in rows:
        if r["task"] == "truthfulqa-mc" and row_variant(r) == label and not r["method"].endswith("/question"):
            values.setdefault(r["method"].removesuffix("/paper"), []).append(r[field])
    return {method: float(np.mean(v)) for method, v in values.items()}


def controls_table(rows: list[dict]) -> pd.DataFrame:
    """Each steering method with its real direction next to the reversed and random-direction controls."""
    columns = {
        "MC2 (paper)": Column("truthfulqa-mc", ("mc2",), "paper"),
        "MC2 (question)": Column("truthfulqa-mc", ("mc2",), "question"),
    }
    columns |= {k: v for k, v in truthfulqa_columns(rows).items() if k.startswith("True*Info")}
    parts = []
    six_tasks = any(r["task"] in TASKS for r in rows)
    for label, name in (("", "real"), ("reversed", "reversed"), ("random", "random")):
        frame = uncertainty_table(rows, columns, variant=label)
        frame = frame.loc[[m for m in CONTROLLED_METHODS if m in frame.index]]
        for which in ("true", "false"):
            changes = paper_mc_means(rows, label, f"loglik_change_{which}")
            frame[f"Δ loglik {which} (paper)"] = [
                f"{changes[m]:.2f}" if m in changes else "-" for m in frame.index
            ]
        if six_tasks:
            averages = multichoice_table(rows, "paper", label).get("Avg", pd.Series(dtype=float))
            frame["six-task Avg (paper)"] = [
                f"{averages[m]:.1f}" if m in averages else "-" for m in frame.index
            ]
        frame.index = [f"{m} ({name})" for m in frame.index]
        parts.append(frame)
    baseline = uncertainty_table(rows, columns)
    if "none" in baseline.index:
        parts.insert(0, baseline.loc[["none"]])
    frame = pd.concat(parts)
    order = ["none", *(f"{m} ({n})" for m in CONTROLLED_METHODS for n in ("real", "reversed", "random"))]
    return frame.loc[[i for i in order if i in frame.index]].fillna("-")


def calibration_lines(rows: list[dict]) -> list[str]:
    """Per fold: the calibrated threshold and its trigger rates on held-out true and false answers."""
    seen = {}
    for row in rows:
        if row.get("threshold_mode") == "calibrated" and "calibration" in row:
            seen[row["fold"]] = row["calibration"]
    return [
        f"- fold {fold}: threshold {c['threshold']:.3f} (balanced accuracy {c['balanced_accuracy']:.3f}); it"
        f" triggers on {100 * c['trigger_rate_true']:.1f}% of {c['n_true']} true and"
        f" {100 * c['trigger_rate_false']:.1f}% of {c['n_false']} false held-out answers"
        for fold, c in sorted(seen.items())
    ]


def thresholds_table(rows: list[dict]) -> pd.DataFrame:
    """The gated methods at the fixed threshold next to the calibrated one (TruthfulQA)."""
    columns = {k: v for k, v in truthfulqa_columns(rows).items() if not k.startswith(("True (", "Info ("))}
    parts = []
    for label, name in (("", "fixed"), ("calibrated", "calibrated")):
        frame = uncertainty_table(rows, columns, variant=label)
        frame = frame.loc[[m for m in GATED_METHODS if m in frame.index]]
        gen: dict[str, list[float]] = {}
        for r in rows:
            if r["task"] == "truthfulqa-gen" and row_variant(r) == label:
                gen.setdefault(r["method"], []).append(100 * r["trigger_rate"])
        steered = paper_mc_means(rows, label, "steered_fraction")
        frame["MC candidates steered (%, paper)"] = [
            f"{100 * steered[m]:.1f}" if m in steered else "-" for m in frame.index
        ]
        frame["answers triggered (%)"] = [f"{np.mean(gen[m]):.1f}" if m in gen else "-" for m in frame.index]
        frame.index = [f"{m} ({name})" for m in frame.index]
        parts.append(frame)
    frame = pd.concat(parts)
    order = [f"{m} ({n})" for m in GATED_METHODS for n in ("fixed", "calibrated")]
    return frame.loc[[i for i in order if i in frame.index]]


def detection_table(rows: list[dict]) -> pd.DataFrame:
    """Per fold and averaged: the head probes' score vs the text-only detector on the test answers."""
    found = [r for r in rows if r["task"] == "truthfulqa-detect"]
    labels = {
        "probes": "mean P(true) of the top-K head probes (FASB's score)",
        "text_only": "text only (bag of words)",
    }
    table: dict[str, dict[str, float]] = {}
    for r in sorted(found, key=lambda r: r["fold"]):
        entry = table.setdefault(labels.get(r["method"], r["method"]), {})
        entry[f"AUROC fold {r['fold']}"] = r["auroc"]
        entry[f"accuracy fold {r['fold']}"] = r["accuracy"]
    frame = pd.DataFrame(table).T
    if not frame.empty:
        frame["AUROC (mean)"] = frame.filter(like="AUROC fold").mean(axis=1)
        frame["accuracy (mean)"] = frame.filter(like="accuracy fold").mean(axis=1)
    return frame


def variant_settings(rows: list[dict]) -> str:
    """Where the controls and the calibrated threshold were computed, as stored in their rows."""
    mc = next((r for r in rows if r["task"] == "truthfulqa-mc"), None)
    gen = next((r for r in rows if r["task"] == "truthfulqa-gen"), None)
    parts = []
    if mc:
        n = mc["config"]["n_mc"]
        parts.append(f"TruthfulQA MC on {'all 817' if n is None else f'a seeded subset of {n}'} questions")
    if gen:
        parts.append(f"generation on a seeded subset of {gen['config']['n_generation']} questions")
    six = sorted({r["task"] for r in rows if r["task"] in TASKS})
    if six:
        parts.append("the six-task rows on " + ", ".join(six))
    seeds = sorted({r["control_seed"] for r in rows if "control_seed" in r})
    return (
        "Computed on " + "; ".join(parts) + f", with their own `none` and real-direction rows on the same"
        f" questions (random directions: {len(seeds)} seed(s), averaged). Same steering settings as above."
    )


def write_report(args: argparse.Namespace, store: ResultStore, variants: ResultStore) -> Path:
    rows = store.rows
    variant_rows = variants.rows
    tqa = truthfulqa_table(rows)
    gen_rows = [r for r in rows if r["task"] == "truthfulqa-gen" and not row_variant(r)]
    triggers = {r["method"]: [] for r in gen_rows}
    for r in gen_rows:
        triggers[r["method"]].append(100 * r["trigger_rate"])
    # Rows scored in one pass share that pass's time (to the second); count each pass once.
    compute = sum(
        seconds
        for _, _, seconds in {
            (r["task"], r.get("fold"), round(r.get("seconds", 0.0))) for r in [*rows, *variant_rows]
        }
    )
    missing = missing_rows(rows)
    lines = [
        f"# FASB reproduction on {args.model}",
        "",
        f"- Command: `{args.command}`",
        (
            "- Full-size run (MC on all 817 questions, generation on 200, six tasks at 200 evaluation / 300 pool"
            " items): `python analysis/reproduce_tables.py`; it resumes from the rows already in the result folder."
        ),
        f"- Library version {__version__}, git revision `{git_revision()}`",
        (f"- Compute recorded in the rows: {compute / 60:.1f} min on a 2-core CPU machine"),
        settings_line(rows),
        (
            "- True and Info come from offline **proxies** (TruthfulQA's BLEU-acc and ROUGE-1-acc against the"
            " reference answers, and a non-refusal check), not from the allenai judge models the paper uses;"
            " they are not comparable with the paper's numbers."
        ),
        "",
    ]
    if missing:
        lines += [
            "**Incomplete run**: these rows are not computed yet (rerun the command to resume): "
            + ", ".join(missing),
            "",
        ]
    reading = Path(args.reading) if args.reading else None
    if reading is not None and reading.is_file():
        # Written by a person after looking at the tables; kept in its own file so a rebuild keeps it.
        lines += ["## In plain words", "", f"_From `{reading}`, written after reading the tables below._", ""]
        lines += [reading.read_text().strip(), ""]
    lines += [
        "## Table 1: TruthfulQA (%)",
        "",
        to_markdown(uncertainty_table(rows, truthfulqa_columns(rows))),
        "",
        (
            "Each cell: value ± half-width of a 95% bootstrap interval over questions (2000 resamples; both test"
            " folds pooled, so a value can differ from the fold average below in the last digit). `(ns)`: the"
            " difference from `none` on the same questions is not significant at 0.05 (paired permutation test,"
            " 10000 permutations, two-sided, not corrected for the number of comparisons). MC uses TruthfulQA's"
            " reference answers (CSV) and `MC_calcs`; `paper` = the released code's per-candidate protocol (the"
            " probe reads each candidate's own text), `question` = one decision per question. none / iti / caa /"
            " question have no protocol and repeat across both columns."
        ),
        "",
        "Fold-averaged point values, as the paper reports them:",
        "",
        to_markdown(tqa),
        "",
    ]
    for protocol in ("paper", "question"):
        with_ci = uncertainty_table(rows, multichoice_columns(protocol))
        points = multichoice_table(rows, protocol)
        if "Avg" in points and not with_ci.empty:
            with_ci["Avg"] = points["Avg"].map(lambda v: f"{v:.1f}")
        lines += [
            f"## Six multiple-choice tasks (accuracy %, {protocol} protocol)",
            "",
            to_markdown(with_ci),
            "",
        ]
    lines += [
        "Same conventions as Table 1; `Avg` is the plain average over the six tasks (no interval).",
        "",
    ]
    disruption = loglik_table(rows)
    if not disruption.empty:
        lines += [
            "## Likelihood disruption (six tasks, paper protocol)",
            "",
            (
                "Mean change in the gold option's log-likelihood (nats, summed over its tokens) caused by"
                " steering; an accuracy gain that comes with a large drop here is disruption, not knowledge:"
            ),
            "",
            to_markdown(disruption, digits=2),
            "",
        ]
    lines += ["## Ablations (Table 3 layout)", "", to_markdown(ablation_table(tqa)), ""]
    lines += ["## What the probes read: head probes vs a text-only detector", ""]
    detection = detection_table(rows)
    if detection.empty:
        lines += ["_Not computed yet: rerun the command (it runs with TruthfulQA MC)._", ""]
    else:
        lines += [
            (
                "Every answer of each test fold (`Q: {q} A: {a}`, the probes' own format), true vs false: FASB's"
                " score (the mean P(true) of the fold's top-K head probes, the number its gate thresholds) and a"
                " bag-of-words logistic regression on the answer text alone, trained on the same train + val"
                ' questions. Accuracy counts P(true) >= 0.5 as "true". A text-only AUROC close to the probes\''
                " means most of what the probes detect is the wording of the answer, which the paper protocol's"
                " per-candidate decision rewards."
            ),
            "",
            to_markdown(detection, digits=3),
            "",
        ]
    lines += ["## Controls: the same steering along the reversed and random directions", ""]
    if any(row_variant(r) in ("reversed", "random") for r in variant_rows):
        lines += [
            variant_settings(variant_rows),
            "",
            to_markdown(controls_table(variant_rows)),
            "",
            (
                "Same heads, strengths and gating (the probes decide as before); only the direction added to"
                " each head changes: reversed, or a random unit vector (seeded, averaged over the seeds)."
                " `(ns)` compares with `none`. Δ loglik: mean change in the log-likelihood of true and of false"
                " answers (nats, fold- and seed-averaged; paper protocol). A method whose controls gain as much"
                " as its real direction is not moving the model towards truth."
            ),
            "",
        ]
    else:
        lines += ["_Not computed yet: rerun the command (the controls run after the main tables)._", ""]
    lines += ["## Threshold: the paper's fixed value vs one calibrated on held-out answers", ""]
    if any(row_variant(r) == "calibrated" for r in variant_rows):
        lines += [
            variant_settings(variant_rows),
            "",
            (
                "Calibrated per fold on the validation questions' reference answers replayed in the generation"
                " format (prefix + question + answer so far), maximising the detector's balanced accuracy:"
            ),
            "",
            *calibration_lines(variant_rows),
            "",
            to_markdown(thresholds_table(variant_rows)),
            "",
        ]
    else:
        lines += ["_Not computed yet: rerun the command (the calibrated threshold runs last)._", ""]
    if triggers:
        lines += [
            "## How often steering happened",
            "",
            "Generation, share of answers that triggered (%): "
            + ", ".join(f"{m} {np.mean(v):.1f}" for m, v in triggers.items()),
            "",
        ]
    frame = trigger_table(rows)
    if not frame.empty:
        lines += [
            (
                "TruthfulQA MC, share of candidate answers scored with steering and the mean change in"
                " answer log-likelihood it caused:"
            ),
            "",
            to_markdown(frame, digits=2),
            "",
        ]
    target = Path(args.report)
    atomic_write_text(target, "\n".join(lines))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", default=None, help="result folder (default results/<model>)")
    parser.add_argument("--report", default=None, help="Markdown file (default results/<model>.md)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--k", type=int, default=24)
    parser.add_argument("--alpha", type=float, default=15.0)
    parser.add_argument("--threshold", type=float, default=0.6)
    parser.add_argument("--back-steps", type=int, default=10)
    parser.add_argument("--n-mc", type=int, default=None)
    parser.add_argument("--n-gen", type=int, default=200)
    parser.add_argument("--n-items", type=int, default=200)
    parser.add_argument("--n-pool", type=int, default=300)
    parser.add_argument(
        "--controls",
        default="reversed,random",
        help="direction controls beside every steering method ('' for none)",
    )
    parser.add_argument("--n-random", type=int, default=2, help="seeds of the random-direction control")
    parser.add_argument(
        "--thresholds", default="fixed,calibrated", help="'fixed' and/or 'calibrated' (TruthfulQA only)"
    )
    parser.add_argument(
        "--variants-out",
        default=None,
        help="result folder of the controls and thresholds (default OUT/variants)",
    )
    parser.add_argument(
        "--variant-n-mc", type=int, default=100, help="TruthfulQA MC questions for the variants"
    )
    parser.add_argument("--variant-n-gen", type=int, default=30, help="generation questions for the variants")
    parser.add_argument("--variant-n-items", type=int, default=200, help="six-task items for the variants")
    parser.add_argument(
        "--variant-tasks",
        default="truthfulqa",
        help="tasks that get the controls and the calibrated threshold: truthfulqa and/or six-task names",
    )
    parser.add_argument(
        "--reading",
        default=None,
        help="Markdown with the plain-words reading of the tables, put at the top of the report"
        " (default results/<model>.reading.md when it exists)",
    )
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    args.controls = [c for c in args.controls.split(",") if c]
    args.thresholds = [t for t in args.thresholds.split(",") if t]
    args.variant_tasks = [t for t in args.variant_tasks.split(",") if t]
    unknown = [t for t in args.variant_tasks if t not in ("truthfulqa", *TASKS)]
    if unknown:
        parser.error(f"--variant-tasks: unknown task(s) {unknown}; expected truthfulqa or some of {TASKS}")
    args.out = args.out or f"results/{args.model}"
    args.report = args.report or f"results/{args.model}.md"
    args.reading = args.reading or f"results/{args.model}.reading.md"
    args.variants_out = args.variants_out or str(Path(args.out) / "variants")
    shown = [a for a in (argv or sys.argv[1:]) if a != "--report-only"]
    args.command = " ".join(["python analysis/reproduce_tables.py", *(shlex.quote(a) for a in shown)])
    steerers = Path(args.out) / "steerers"
    if not args.report_only:
        model = load_model(args.model)
        runs = [(plan, args.out) for plan in plans(args)]
        runs += [(plan, args.variants_out) for plan in variant_plans(args)]
        for plan, out in runs:
            run_plan(model, plan, out, data_dir=args.data_dir, steerer_dir=steerers)
            write_report(args, ResultStore(args.out), ResultStore(args.variants_out))
    report = write_report(args, ResultStore(args.out), ResultStore(args.variants_out))
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
