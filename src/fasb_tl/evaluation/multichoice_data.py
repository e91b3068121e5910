"""The multiple-choice tasks as pool / eval splits of ChoiceRecord lists: :func:`load_task` and :func:`sample`.

The loaders, SADI's prompt templates and answer words live in :mod:`fasb_tl.evaluation.multichoice_loaders`.
"""

from __future__ import annotations

import os
import random

from fasb_tl.data.paths import dataset_dir
from fasb_tl.data.records import DatasetError
from fasb_tl.evaluation.multichoice_loaders import LOADERS, ChoiceRecord

TASKS = ("copa", "storycloze", "nli", "mmlu", "sst2", "winogrande")
# Not one of the paper's six; SADI's own NLI set, kept for comparison with SNLI.
ALTERNATIVE_TASKS = ("xnli_en",)
SPLITS = ("pool", "eval")

# The subfolder of the data folder each task reads (SNLI and XNLI-en share nli/).
TASK_FOLDERS = {task: "nli" if task == "xnli_en" else task for task in TASKS + ALTERNATIVE_TASKS}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}: expected one of {SPLITS}")


def load_task(task: str, split: str, data_dir: str | os.PathLike | None = None) -> list[ChoiceRecord]:
    """split is "pool" (items for fitting probes/steering vectors) or "eval" (evaluation items); the two are disjoint.

    ``task`` is one of :data:`TASKS` or :data:`ALTERNATIVE_TASKS`. Disjointness is by context text: a pool
    item whose prompt also occurs in the eval split is dropped from the pool (the eval set is never changed).
    In the shipped data this removes 3 SST-2 train sentences and 5 MMLU dev questions that reappear in test.
    """
    if task not in LOADERS:
        raise DatasetError(f"unknown task {task!r}: expected one of {TASKS + ALTERNATIVE_TASKS}")
    _check_split(split)
    folder = dataset_dir(TASK_FOLDERS[task], data_dir)
    loader = LOADERS[task]
    records = loader(folder, split)
    if split == "pool":
        eval_contexts = {record.context for record in loader(folder, "eval")}
        records = [record for record in records if record.context not in eval_contexts]
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise DatasetError(f"{task} {split}: id {record.id!r} appears twice")
        seen.add(record.id)
    return records


def sample(records: list[ChoiceRecord], n: int | None, seed: int) -> list[ChoiceRecord]:
    """A seeded random subset of n records in their original order (all records when n is None or >= len)."""
    if n is None or n >= len(records):
        return list(records)
    if n < 0:
        raise ValueError(f"sample size must be non-negative, got {n}")
    chosen = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in chosen]
