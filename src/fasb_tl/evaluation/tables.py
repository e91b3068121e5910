"""Fold-averaged result tables in the paper's layout, as DataFrames and Markdown.

Rows run with another model, config (or CAA config) or supplied Steerer are never averaged together: each
table is built per :func:`config_sections` and, when there are several, its row labels say what differs
(``fasb [alpha=5.0]``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fasb_tl.evaluation.multichoice_data import TASKS
from fasb_tl.evaluation.stats import bootstrap_ci, paired_test
from fasb_tl.evaluation.variants import row_variant
from fasb_tl.methods import ALL_METHODS

METHOD_ORDER = ALL_METHODS
TRUTHFULQA_TASKS = ("truthfulqa-mc", "truthfulqa-gen")


def _settings(row: dict, caa: bool = True) -> dict:
    """What a row was run with: the model, a supplied Steerer's digest, its config's fields and (``caa``) its
    CAA config as ``caa.{name}``."""
    supplied = {"steerer": row["steerer"]} if "steerer" in row else {}
    found = {"model": row.get("model"), **supplied, **row.get("config", {})}
    return found | ({f"caa.{name}": value for name, value in row.get("caa", {}).items()} if caa else {})


def _key(row: dict, caa: bool = True) -> str:
    return json.dumps(_settings(row, caa), sort_keys=True)


def config_sections(rows: list[dict], tasks: Sequence[str]) -> list[tuple[str, list[dict]]]:
    """The rows of ``tasks`` split by model and full config, CAA rows also by their CAA config (the other rows
    of a config join each of its CAA sections), in order of appearance; each section is labelled by the
    settings that tell the sections apart (``alpha=5.0, model=...``; ``-`` where a section lacks one)."""
    chosen = [
        (row, _key(row, False), _key(row) if "caa" in row else None) for row in rows if row["task"] in tasks
    ]
    sections: dict[str, dict[str, dict]] = {}
    for row, base, full in chosen:
        caas = sections.setdefault(base, {})
        if full is not None:
            caas.setdefault(full, _settings(row))
    found = []
    for base, caas in sections.items():
        for full, settings in (caas or {base: json.loads(base)}).items():
            found.append((settings, [r for r, b, f in chosen if b == base and f in (None, full)]))
    names = dict.fromkeys(name for settings, _ in found for name in settings)
    differ = [n for n in names if len({json.dumps(s.get(n, "-"), sort_keys=True) for s, _ in found}) > 1]
    return [(", ".join(f"{n}={s.get(n, '-')}" for n in differ), part) for s, part in found]


def _per_config(rows: list[dict], tasks: Sequence[str], build: Callable[[list[dict]], pd.DataFrame]):
    """``build(rows)`` when the rows of ``tasks`` share one model and config, else one ``build`` per
    :func:`config_sections` section, its row labels suffixed with what tells the section apart."""
    sections = config_sections(rows, tasks)
    if len(sections) <= 1:
        return build(rows)
    frames = []
    for label, part in sections:
        frame = build(part)
        frame.index = [f"{method} [{label}]" for method in frame.index]
        frames.append(frame)
    return pd.concat(frames)


def _fold_mean(rows: list[dict], task: str, metric: str, variant: str = "") -> dict[str, float]:
    """Mean of ``metric`` over the rows of each method (folds, and the seeds of a random control)."""
    values: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row["task"] == task and metric in row and row_variant(row) == variant:
            values[row["method"]].append(row[metric])
    return {method: float(np.mean(v)) for method, v in values.items()}


def _mc_value(mc: dict[str, float], method: str, protocol: str) -> float:
    """MC value of a generation method name under a protocol (none/iti/question have no protocol)."""
    return mc.get(f"{method}/{protocol}", mc.get(method, np.nan))


def _judge_names(rows: list[dict]) -> tuple[list[str], list[str]]:
    """The truth judges and the info judges that scored the generation rows."""
    judges: dict[str, dict] = {}
    for row in rows:
        if row["task"] == "truthfulqa-gen":
            judges.update(row.get("judges", {}))
    truth = [name for name, j in judges.items() if j["kind"] == "truth"]
    info = [name for name, j in judges.items() if j["kind"] == "info"]
    return truth, info


def truthfulqa_table(rows: list[dict], variant: str = "") -> pd.DataFrame:
    """Table 1: True, Info, True*Info (per truth judge) and MC1/MC2 (per protocol), fold-averaged, in %, per
    model and config (:func:`config_sections`).

    ``variant`` selects a control (``reversed``, ``random``) or ``calibrated`` instead of the plain methods."""
    return _per_config(rows, TRUTHFULQA_TASKS, lambda part: _truthfulqa_table(part, variant))


def _truthfulqa_table(rows: list[dict], variant: str) -> pd.DataFrame:
    truth, info = _judge_names(rows)
    table = {}
    mc = {metric: _fold_mean(rows, "truthfulqa-mc", metric, variant) for metric in ("mc1", "mc2")}
    generated = {name: _fold_mean(rows, "truthfulqa-gen", name, variant) for name in truth + info}
    for method in METHOD_ORDER:
        line = {}
        for name in truth:
            line[f"True ({name})"] = generated[name].get(method, np.nan)
        for name in info:
            line[f"Info ({name})"] = generated[name].get(method, np.nan)
        for t in truth:
            for i in info:
                line[f"True*Info ({t} x {i})"] = line[f"True ({t})"] * line[f"Info ({i})"]
        for protocol in ("paper", "question"):
            for metric in ("mc1", "mc2"):
                line[f"{metric.upper()} ({protocol})"] = _mc_value(mc[metric], method, protocol)
        table[method] = line
    frame = pd.DataFrame(table).T * 100
    return frame.dropna(how="all")


def generation_histories(rows: list[dict]) -> str:
    """How the generation rows kept steered positions in the KV cache, per method, in words for a table's
    caption (rows stored before ``iti_history`` existed generated ITI with ``reference``)."""
    used: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row["task"] == "truthfulqa-gen" and row["method"] not in ("none",):
            config = row.get("config", {})
            method = row["method"]
            history = config.get("iti_history", "reference") if method == "iti" else config.get("history")
            used[str(history)].add(method)
    parts = [f"{history} ({', '.join(sorted(methods))})" for history, methods in sorted(used.items())]
    return "Generation history: " + "; ".join(parts) if parts else ""


def multichoice_table(rows: list[dict], protocol: str = "paper", variant: str = "") -> pd.DataFrame:
    """Six-task accuracy (%) per method under ``protocol`` (and ``variant``), with the average over tasks, per
    model and config (:func:`config_sections`)."""
    return _per_config(rows, TASKS, lambda part: _multichoice_table(part, protocol, variant))


def _multichoice_table(rows: list[dict], protocol: str, variant: str) -> pd.DataFrame:
    table = {}
    for method in METHOD_ORDER:
        line = {}
        for task in TASKS:
            values = _fold_mean(rows, task, "accuracy", variant)
            line[task] = _mc_value(values, method, protocol)
        table[method] = line
    frame = pd.DataFrame(table).T * 100
    frame = frame.dropna(how="all").dropna(axis=1, how="all")
    if not frame.empty:
        frame["Avg"] = frame.mean(axis=1)
    return frame


@dataclass(frozen=True)
class Column:
    """A table column: the product of the means of per-question ``metrics`` of ``task`` (under ``protocol``)."""

    task: str
    metrics: tuple[str, ...]
    protocol: str | None = None


def truthfulqa_columns(rows: list[dict]) -> dict[str, Column]:
    """Table 1's columns (as in :func:`truthfulqa_table`) for the judges present in ``rows``."""
    truth, info = _judge_names(rows)
    columns = {f"True ({t})": Column("truthfulqa-gen", (t,)) for t in truth}
    columns |= {f"Info ({i})": Column("truthfulqa-gen", (i,)) for i in info}
    columns |= {f"True*Info ({t} x {i})": Column("truthfulqa-gen", (t, i)) for t in truth for i in info}
    for protocol in ("paper", "question"):
        for metric in ("mc1", "mc2"):
            columns[f"{metric.upper()} ({protocol})"] = Column("truthfulqa-mc", (metric,), protocol)
    return columns


def multichoice_columns(protocol: str) -> dict[str, Column]:
    """The six tasks' accuracy columns under ``protocol``."""
    return {task: Column(task, ("correct",), protocol) for task in TASKS}


def per_question(
    rows: list[dict], task: str, method: str, metric: str, variant: str = ""
) -> dict[str, float]:
    """``metric`` per question (or item) id of ``method`` on ``task``, pooled over folds and averaged over the
    seeds of a random control."""
    values: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row["task"] != task or row["method"] != method or row_variant(row) != variant:
            continue
        per_item = row.get("per_question", row.get("per_item", {}))
        ids = row.get("question_ids", row.get("item_ids", []))
        if metric in per_item:
            for question, value in zip(ids, per_item[metric]):
                values[question].append(float(value))
    return {question: float(np.mean(v)) for question, v in values.items()}


def _arrays(rows: list[dict], column: Column, method: str, ids: list[str] | None = None, variant: str = ""):
    name = method if column.protocol is None else f"{method}/{column.protocol}"
    found = [per_question(rows, column.task, name, m, variant) for m in column.metrics]
    if not found[0] and column.protocol is not None:
        found = [per_question(rows, column.task, method, m, variant) for m in column.metrics]
    if not all(found):
        return None, None
    ids = ids if ids is not None else sorted(set.intersection(*(set(f) for f in found)))
    if not ids or any(i not in f for f in found for i in ids):
        return None, None
    return ids, [[f[i] for i in ids] for f in found]


def uncertainty_table(
    rows: list[dict],
    columns: Mapping[str, Column],
    *,
    baseline: str = "none",
    variant: str = "",
    level: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """Cells ``value ± half-width`` (%, 95% bootstrap CI over questions); ``(ns)`` marks a difference from
    ``baseline`` (the plain, unsteered method) on the same questions that a paired permutation test does not
    find at ``level``. ``variant`` selects a control or the calibrated threshold. Per model and config
    (:func:`config_sections`), so the baseline is always of the same config."""
    tasks = [column.task for column in columns.values()]
    options = {"baseline": baseline, "variant": variant, "level": level, "seed": seed}
    return _per_config(rows, tasks, lambda part: _uncertainty_table(part, columns, **options))


def _uncertainty_table(
    rows: list[dict], columns: Mapping[str, Column], *, baseline: str, variant: str, level: float, seed: int
) -> pd.DataFrame:
    table = {}
    for method in METHOD_ORDER:
        line = {}
        for title, column in columns.items():
            ids, arrays = _arrays(rows, column, method, variant=variant)
            if arrays is None:
                continue
            interval = bootstrap_ci(*arrays, seed=seed)
            cell = f"{100 * interval.estimate:.1f} ± {100 * interval.half_width:.1f}"
            _, reference = _arrays(rows, column, baseline, ids)
            compared = (method != baseline or variant) and reference is not None
            if compared and not paired_test(arrays, reference, seed=seed).significant(level):
                cell += " (ns)"
            line[title] = cell
        if line:
            table[method] = line
    return pd.DataFrame(table).T.reindex(columns=list(columns)).dropna(axis=1, how="all")


def to_markdown(frame: pd.DataFrame, digits: int = 1) -> str:
    """A GitHub Markdown table (no extra dependency), NaN shown as a dash."""
    if frame.empty:
        return "_(no rows)_\n"
    header = "| method | " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|---|" + "---:|" * len(frame.columns)
    lines = [header, rule]
    for index, row in frame.iterrows():
        cells = ["-" if pd.isna(v) else v if isinstance(v, str) else f"{v:.{digits}f}" for v in row]
        lines.append(f"| {index} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
