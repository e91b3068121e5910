"""The project's own built-in dataset: common misconceptions and plain facts, written for fasb_tl."""

from __future__ import annotations

import json
from importlib import resources

from fasb_tl.data.records import DatasetError, QARecord, check_unique_questions

BUILTIN_FILE = "builtin_qa.jsonl"
BUILTIN_KEYS = {"id", "category", "question", "best_answer", "true_answers", "false_answers"}


def load_builtin() -> list[QARecord]:
    """The built-in questions (no network, no data folder needed), in file order."""
    text = resources.files("fasb_tl.data").joinpath(BUILTIN_FILE).read_text(encoding="utf-8")
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if set(row) != BUILTIN_KEYS:
            raise DatasetError(
                f"{BUILTIN_FILE}:{line_number} has keys {sorted(row)}, expected {sorted(BUILTIN_KEYS)}"
            )
        records.append(
            QARecord(
                id=row["id"],
                question=row["question"],
                true_answers=tuple(row["true_answers"]),
                false_answers=tuple(row["false_answers"]),
                best_answer=row["best_answer"],
                category=row["category"],
            )
        )
    check_unique_questions(records, BUILTIN_FILE)
    return records
