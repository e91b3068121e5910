"""Fold-averaged result tables in the paper's layout, as DataFrames and Markdown."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from fasb_tl.evaluation.multichoice_data import TASKS

METHOD_ORDER = ("none", "iti", "caa", "question", "no_backtrack", "fixed", "fasb")


def _fold_mean(rows: list[dict], task: str, metric: str) -> dict[str, float]:
    values: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row["task"] == task and metric in row:
            values[row["method"]].append(row[metric])
    return {method: float(np.mean(v)) for method, v in values.items()}


def _mc_value(mc: dict[str, float], method: str, protocol: str) -> float:
    """MC value of a generation method name under a protocol (none/iti/question have no protocol)."""
    return mc.get(f"{method}/{protocol}", mc.get(method, np.nan))


def truthfulqa_table(rows: list[dict]) -> pd.DataFrame:
    """Table 1: True, Info, True*Info (per truth judge) and MC1/MC2 (per protocol), fold-averaged, in %."""
    judges: dict[str, dict] = {}
    for row in rows:
        if row["task"] == "truthfulqa-gen":
            judges.update(row.get("judges", {}))
    truth = [name for name, j in judges.items() if j["kind"] == "truth"]
    info = [name for name, j in judges.items() if j["kind"] == "info"]
    table = {}
    mc = {metric: _fold_mean(rows, "truthfulqa-mc", metric) for metric in ("mc1", "mc2")}
    generated = {name: _fold_mean(rows, "truthfulqa-gen", name) for name in truth + info}
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


def multichoice_table(rows: list[dict], protocol: str = "paper") -> pd.DataFrame:
    """Six-task accuracy (%) per method under ``protocol``, with the average over the tasks present."""
    table = {}
    for method in METHOD_ORDER:
        line = {}
        for task in TASKS:
            values = _fold_mean(rows, task, "accuracy")
            line[task] = _mc_value(values, method, protocol)
        table[method] = line
    frame = pd.DataFrame(table).T * 100
    frame = frame.dropna(how="all").dropna(axis=1, how="all")
    if not frame.empty:
        frame["Avg"] = frame.mean(axis=1)
    return frame


def to_markdown(frame: pd.DataFrame, digits: int = 1) -> str:
    """A GitHub Markdown table (no extra dependency), NaN shown as a dash."""
    if frame.empty:
        return "_(no rows)_\n"
    header = "| method | " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|---|" + "---:|" * len(frame.columns)
    lines = [header, rule]
    for index, row in frame.iterrows():
        cells = ["-" if pd.isna(v) else f"{v:.{digits}f}" for v in row]
        lines.append(f"| {index} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
