"""TruthfulQA: ``mc_task.json`` (order, MC targets) aligned with ``TruthfulQA.csv`` (reference answers)."""

from __future__ import annotations

import json
import os

import pandas as pd

from fasb_tl.data.paths import dataset_dir, require_file
from fasb_tl.data.records import DatasetError, QARecord, check_unique_questions

CSV_COLUMNS = ("Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers")


def split_multi_answer(answers: str, sep: str = ";") -> list[str]:
    """Split a ``;``-separated reference list and end each answer with a period (TruthfulQA's utility)."""
    out = []
    for answer in answers.strip().split(sep):
        answer = answer.strip()
        if answer:
            out.append(answer if answer.endswith(".") else answer + ".")
    return out


def format_best(answer: str) -> str:
    """The best answer, stripped and closed with a period (TruthfulQA's ``format_best``)."""
    answer = answer.strip()
    return answer if answer.endswith(".") else answer + "."


def _record(index: int, item: dict, row: pd.Series) -> QARecord:
    mc2 = item["mc2_targets"]
    mc1 = item["mc1_targets"]
    return QARecord(
        id=f"truthfulqa-{index:03d}",
        question=item["question"],
        true_answers=tuple(a for a, label in mc2.items() if label == 1),
        false_answers=tuple(a for a, label in mc2.items() if label == 0),
        category=str(row["Category"]),
        extra={
            "type": str(row["Type"]),
            "best_answer": format_best(str(row["Best Answer"])),
            "correct_answers": split_multi_answer(str(row["Correct Answers"])),
            "incorrect_answers": split_multi_answer(str(row["Incorrect Answers"])),
            "mc1_choices": list(mc1),
            "mc1_labels": list(mc1.values()),
        },
    )


def load_truthfulqa(data_dir: str | os.PathLike | None = None) -> list[QARecord]:
    """All 817 TruthfulQA questions in ``mc_task.json`` order, from the ``truthfulqa/`` folder that
    :func:`~fasb_tl.data.paths.dataset_dir` finds (``data_dir``, ``$FASB_TL_DATA``, the repository's ``data/``,
    else the copy installed with the package).

    ``true_answers``/``false_answers`` are the ``mc2_targets`` (the probe bank of ITI and FASB); the CSV's
    best/correct/incorrect answers and the MC1 targets are in ``extra``. CSV rows are matched to the JSON by
    whitespace-stripped question text; any question that cannot be matched raises.
    """
    folder = dataset_dir("truthfulqa", data_dir)
    with open(require_file(folder, "mc_task.json"), encoding="utf-8") as handle:
        items = json.load(handle)
    frame = pd.read_csv(require_file(folder, "TruthfulQA.csv"), encoding="utf-8-sig", keep_default_na=False)
    missing = [c for c in CSV_COLUMNS if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{folder / 'TruthfulQA.csv'} lacks column(s) {missing}; found {list(frame.columns)}"
        )
    by_question: dict[str, pd.Series] = {}
    for _, row in frame.iterrows():
        key = str(row["Question"]).strip()
        if key in by_question:
            raise DatasetError(f"TruthfulQA.csv lists the question {key!r} twice")
        by_question[key] = row
    unmatched = [item["question"] for item in items if item["question"].strip() not in by_question]
    if unmatched:
        raise DatasetError(
            f"{len(unmatched)} mc_task.json question(s) have no TruthfulQA.csv row, e.g. {unmatched[0]!r}"
        )
    records = [_record(i, item, by_question[item["question"].strip()]) for i, item in enumerate(items)]
    check_unique_questions(records, "TruthfulQA")
    return records


def load_truthfulqa_hub() -> list[QARecord]:
    """TruthfulQA from the Hugging Face ``datasets`` library (needs network; same records as the local files)."""
    from datasets import load_dataset

    mc = load_dataset("truthful_qa", "multiple_choice")["validation"]
    gen = {row["question"].strip(): row for row in load_dataset("truthful_qa", "generation")["validation"]}
    records = []
    for index, item in enumerate(mc):
        question = item["question"].strip()
        if question not in gen:
            raise DatasetError(f"truthful_qa 'generation' has no row for the MC question {question!r}")
        row = gen[question]
        mc2 = dict(zip(item["mc2_targets"]["choices"], item["mc2_targets"]["labels"]))
        mc1 = dict(zip(item["mc1_targets"]["choices"], item["mc1_targets"]["labels"]))
        frame_row = pd.Series(
            {
                "Type": row["type"],
                "Category": row["category"],
                "Best Answer": row["best_answer"],
                "Correct Answers": ";".join(row["correct_answers"]),
                "Incorrect Answers": ";".join(row["incorrect_answers"]),
            }
        )
        records.append(
            _record(index, {"question": item["question"], "mc1_targets": mc1, "mc2_targets": mc2}, frame_row)
        )
    check_unique_questions(records, "truthful_qa (Hub)")
    return records
