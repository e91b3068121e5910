"""Datasets as :class:`QARecord` lists, prompt formats and question-level splits."""

from fasb_tl.data.builtin import load_builtin
from fasb_tl.data.paths import data_root
from fasb_tl.data.prompts import (
    QA_PRIMER,
    TRUTHFULQA_INSTRUCTION,
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


def load_dataset(name: str, data_dir: str | None = None) -> list[QARecord]:
    """A dataset by name: ``"builtin"`` (packaged) or ``"truthfulqa"`` (from the data folder)."""
    if name == "builtin":
        return load_builtin()
    if name == "truthfulqa":
        return load_truthfulqa(data_dir)
    raise DatasetError(f"unknown dataset {name!r}: expected one of {DATASETS}")


__all__ = [
    "DATASETS",
    "DatasetError",
    "QARecord",
    "QA_PRIMER",
    "Split",
    "TRUTHFULQA_INSTRUCTION",
    "data_root",
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
