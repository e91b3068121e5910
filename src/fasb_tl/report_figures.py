"""The figures of a result folder written by ``fasb eval`` (or ``fasb sweep``), as PNG files.

:func:`plot_result_folder` reads the folder's rows (``results.jsonl``, through
:class:`~fasb_tl.evaluation.results.ResultStore`) and the Steerers under ``steerers/``, and draws:

* ``heads_{steerer folder}``: each Steerer's layer x head validation accuracy with its K heads starred. A
  Steerer file does not record the balance of its validation labels, so these heatmaps use a sequential
  colour scale, not one centred on the majority rate (pass ``majority`` to
  :func:`~fasb_tl.plotting.plot_head_accuracy` where the labels are at hand).
* ``truthfulqa_mc1``, ``truthfulqa_mc2``: TruthfulQA MC per method (``fasb/paper``, ``fasb/question``, ...);
  ``{task}_accuracy``: each of the six tasks' accuracy per method; ``truthfulqa_gen_{judge}``: the rate of
  each generation judge (or offline proxy) per method; ``truthfulqa_gen_triggers``: the share of generated
  answers each method triggered on, with its 95% Wilson interval (rows keep a rate per fold, not which
  answers triggered).

The scores of MC, the six tasks and the judges have 95% percentile-bootstrap intervals over questions
pooled over folds (what the report's uncertainty tables show); the ``none`` method is a dashed line with its
interval as a band; a panel below shows the fraction of items steered (answer choices for MC, answers
triggered for generation). Only the plain methods' rows are drawn (no direction controls, no calibrated
thresholds). A folder holding several configs (a sweep) gets one figure per config, numbered ``_1``, ``_2``,
... in the order of :func:`~fasb_tl.evaluation.tables.config_sections`, the config named in the title.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import chain
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from fasb_tl.evaluation.multichoice_data import TASKS
from fasb_tl.evaluation.results import RESULTS_FILE, ResultStore
from fasb_tl.evaluation.stats import bootstrap_ci
from fasb_tl.evaluation.tables import METHOD_ORDER, config_sections, per_question
from fasb_tl.evaluation.variants import row_variant
from fasb_tl.plotting import plot_head_accuracy, plot_method_scores, save_figure
from fasb_tl.probes import wilson_interval
from fasb_tl.steerer_file import SteererFormatError, read_folder
from fasb_tl.steering import Steerer, SteererMeta

FIGURES_FOLDER = "figures"
STEERERS_FOLDER = "steerers"


class ResultFolderError(ValueError):
    """A folder that is not a result folder of ``fasb eval``."""


@dataclass(frozen=True)
class _Score:
    """One kind of figure: a per-question ``metric`` of ``task``, its file ``name`` and axis label, and the
    row field holding the fraction of items steered."""

    task: str
    metric: str
    name: str
    label: str
    steered: str
    steered_label: str


def _scores(rows: list[dict]) -> list[_Score]:
    """Every figure kind the rows could fill (those without rows draw nothing)."""
    found = [
        _Score(
            "truthfulqa-mc",
            m,
            f"truthfulqa_{m}",
            f"TruthfulQA {m.upper()}",
            "steered_fraction",
            "choices steered",
        )
        for m in ("mc1", "mc2")
    ]
    found += [
        _Score(task, "correct", f"{task}_accuracy", f"{task} accuracy", "steered_fraction", "items steered")
        for task in TASKS
    ]
    judges = {}
    for row in rows:
        if row["task"] == "truthfulqa-gen":
            judges.update(row.get("judges", {}))
    for judge, about in judges.items():
        kind = "True" if about.get("kind") == "truth" else "Info"
        label = f"TruthfulQA {kind} ({judge})"
        found.append(
            _Score("truthfulqa-gen", judge, f"truthfulqa_gen_{judge}", label, "trigger_rate", "triggered")
        )
    return found


def _method_place(name: str) -> tuple[int, str, str]:
    """Methods in the tables' order, each method's protocols (``fasb/paper``, ``fasb/question``) together."""
    base, _, protocol = name.partition("/")
    return METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), protocol, name


def _steered_fraction(rows: list[dict], task: str, method: str, field: str) -> float:
    """Mean of ``field`` over the method's rows (its folds); NaN when they do not record it."""
    values = [row[field] for row in rows if row["task"] == task and row["method"] == method and field in row]
    return float(np.mean(values)) if values else float("nan")


def _title(label: str, rows: list[dict], task: str, config: str) -> str:
    """``{label} per method``, the model, and the config when the folder holds several."""
    model = next(row["model"] for row in rows if row["task"] == task)
    return f"{label} per method\n{model}" + (f"\n{config}" if config else "")


def _method_figure(rows: list[dict], config: str, score: _Score) -> Figure | None:
    """Every method's score with its bootstrap interval against ``none``, for the rows of one config."""
    methods = sorted({row["method"] for row in rows if row["task"] == score.task}, key=_method_place)
    found = {m: per_question(rows, score.task, m, score.metric) for m in methods}
    found = {method: values for method, values in found.items() if values}
    if not found:
        return None
    intervals = {method: bootstrap_ci(list(values.values())) for method, values in found.items()}
    none = intervals.get("none")
    steered = [_steered_fraction(rows, score.task, method, score.steered) for method in found]
    return plot_method_scores(
        list(found),
        [interval.estimate for interval in intervals.values()],
        [(interval.low, interval.high) for interval in intervals.values()],
        n=[len(values) for values in found.values()],
        baseline=None if none is None else none.estimate,
        baseline_interval=None if none is None else (none.low, none.high),
        ylabel=score.label,
        title=_title(score.label, rows, score.task, config),
        interval="95% bootstrap CI over questions",
        steered=None if np.isnan(steered).all() else steered,
        steered_label=score.steered_label,
    )


def _trigger_figure(rows: list[dict], config: str) -> Figure | None:
    """The share of generated answers on which each method triggered, pooled over folds, with its Wilson
    interval (rows record a rate per fold, not which answers triggered)."""
    task = "truthfulqa-gen"
    chosen = [row for row in rows if row["task"] == task and "trigger_rate" in row]
    methods = sorted({row["method"] for row in chosen}, key=_method_place)
    if not methods:
        return None
    counts = [sum(row["n_questions"] for row in chosen if row["method"] == m) for m in methods]
    triggered = [
        sum(r["trigger_rate"] * r["n_questions"] for r in chosen if r["method"] == m) for m in methods
    ]
    rates = np.asarray(triggered) / np.asarray(counts)
    intervals = [wilson_interval(np.array([rate]), count) for rate, count in zip(rates, counts)]
    return plot_method_scores(
        methods,
        rates,
        [(float(low[0]), float(high[0])) for low, high in intervals],
        n=counts,
        ylabel="answers triggered",
        title=_title("TruthfulQA generation: answers triggered", rows, task, config),
        interval="95% Wilson interval",
    )


def _figure_kinds(rows: list[dict]) -> list[tuple[str, str, Callable[[list[dict], str], Figure | None]]]:
    """``(file name, task, draw)`` of every figure the rows could fill; ``draw(rows of a config, config)``."""
    kinds = [(score.name, score.task, partial(_method_figure, score=score)) for score in _scores(rows)]
    return [*kinds, ("truthfulqa_gen_triggers", "truthfulqa-gen", _trigger_figure)]


def _score_figures(rows: list[dict]) -> Iterator[tuple[str, Figure]]:
    for name, task, draw in _figure_kinds(rows):
        sections = config_sections(rows, [task])
        for number, (config, part) in enumerate(sections, start=1):
            figure = draw(part, config)
            if figure is not None:
                yield (name if len(sections) == 1 else f"{name}_{number}"), figure


def _read_steerer(folder: Path) -> Steerer:
    # Not Steerer.load: that first recovers an interrupted save, and drawing must not change the folder it
    # reads (a run may be writing it).
    meta, tensors = read_folder(folder, SteererMeta)
    return Steerer(meta=meta, **tensors)


def _steerer_figures(folder: Path) -> Iterator[tuple[str, Figure]]:
    """A heatmap per readable Steerer under ``folder``; an unreadable one is skipped with a warning (the
    evaluation fits it again on its next run)."""
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        # Hidden entries are the temporaries and swap folders of saves in progress or killed.
        if path.name.startswith(".") or not path.is_dir():
            continue
        try:
            steerer = _read_steerer(path)
        except SteererFormatError as err:
            warnings.warn(f"no heatmap for {path}: {err}", stacklevel=3)
            continue
        meta = steerer.meta
        fold = "" if meta.fold is None else f", fold {meta.fold}"
        data = f"{meta.dataset}{fold}, {meta.n_val} validation questions"
        yield (
            f"heads_{path.name}",
            plot_head_accuracy(steerer.val_accuracy, steerer.heads, model=meta.model_name, dataset=data),
        )


def _plain_rows(folder: Path) -> list[dict]:
    """The rows of the plain methods in ``folder``, refusing a folder that holds no ``results.jsonl``."""
    if not (folder / RESULTS_FILE).is_file():
        state = "does not exist" if not folder.exists() else "is not a folder" if not folder.is_dir() else ""
        raise ResultFolderError(
            f"{folder} is not a result folder of `fasb eval`: "
            + (f"it {state}" if state else f"it has no {RESULTS_FILE}")
            + f"; expected a folder written by `fasb eval --out` ({RESULTS_FILE}, and {STEERERS_FOLDER}/)"
        )
    return [row for row in ResultStore(folder).rows if row_variant(row) == ""]


def plot_result_folder(folder: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, Path]:
    """Draw the figures of the result folder ``folder`` (module docstring) into ``out`` (default
    ``folder/figures``) as ``{name}.png`` and return ``{name: path}``, in drawing order.

    Raises :class:`ResultFolderError`, naming the folder and what was expected, when ``folder`` has no
    ``results.jsonl``, and :class:`~fasb_tl.evaluation.results.ResultFileError` (naming file and line) when a
    row cannot be trusted. The result folder is only read (unless ``out`` is inside it).

    Example::

        paths = plot_result_folder("runs/eval")
        paths["truthfulqa_mc2"]  # runs/eval/figures/truthfulqa_mc2.png
    """
    root = Path(folder)
    rows = _plain_rows(root)
    target = Path(out) if out is not None else root / FIGURES_FOLDER
    written = {}
    for name, figure in chain(_steerer_figures(root / STEERERS_FOLDER), _score_figures(rows)):
        written[name] = save_figure(figure, target / f"{name}.png")
        # Figures are drawn one at a time and closed once saved: a sweep folder can make dozens.
        plt.close(figure)
    return written
