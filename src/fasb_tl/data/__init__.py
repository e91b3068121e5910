"""Datasets as :class:`QARecord` lists, prompt formats and question-level splits."""

from fasb_tl.data.builtin import load_builtin
from fasb_tl.data.paths import dataset_dir
from fasb_tl.data.prompts import (
    QA_PRIMER,
    TRUTHFULQA_INSTRUCTION,
    ProbeBank,
    extract_answer,
    generation_prefix,
    generation_prompt,
    probe_bank,
    probe_prompt,
    tuning_bank,
    tuning_prompt,
)
from fasb_tl.data.records import DatasetError, QARecord
from fasb_tl.data.splits import Split, question_splits
from fasb_tl.data.truthfulqa import load_truthfulqa, load_truthfulqa_hub

DATASETS = ("builtin", "truthfulqa")
# The built-in file is grouped by topic, so its folds are drawn from a seeded permutation; TruthfulQA keeps
# the reference's folds over mc_task.json order.
SHUFFLED_FOLDS = {"builtin": True, "truthfulqa": False}


def load_dataset(name: str, data_dir: str | None = None) -> list[QARecord]:
    """A dataset by name: ``"builtin"`` (packaged) or ``"truthfulqa"`` (from the data folder)."""
    if name == "builtin":
        return load_builtin()
    if name == "truthfulqa":
        return load_truthfulqa(data_dir)
    raise DatasetError(f"unknown dataset {name!r}: expected one of {DATASETS}")


def dataset_splits(
    name: str, n_questions: int, n_folds: int = 2, val_fraction: float = 0.2, seed: int = 42
) -> list[Split]:
    """Question splits for a named dataset, shuffled or in file order as that dataset requires."""
    return question_splits(n_questions, n_folds, val_fraction, seed, shuffle=SHUFFLED_FOLDS.get(name, True))


__all__ = [
    "DATASETS",
    "QA_PRIMER",
    "TRUTHFULQA_INSTRUCTION",
    "DatasetError",
    "ProbeBank",
    "QARecord",
    "Split",
    "dataset_dir",
    "dataset_splits",
    "extract_answer",
    "generation_prefix",
    "generation_prompt",
    "load_builtin",
    "load_dataset",
    "load_truthfulqa",
    "load_truthfulqa_hub",
    "probe_bank",
    "probe_prompt",
    "question_splits",
    "tuning_bank",
    "tuning_prompt",
]
