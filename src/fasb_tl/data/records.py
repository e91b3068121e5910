"""The one record type every dataset loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field


class DatasetError(ValueError):
    """A dataset that is missing, malformed or unusable for the requested step."""


@dataclass(frozen=True)
class QARecord:
    """A question with its true and false answers (label 1 / 0 in probe banks).

    ``extra`` holds dataset-specific fields (for TruthfulQA: the CSV reference answers and MC1 targets).
    """

    id: str
    question: str
    true_answers: tuple[str, ...]
    false_answers: tuple[str, ...]
    best_answer: str | None = None
    category: str | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.question.strip():
            raise DatasetError(f"record {self.id!r} has an empty question")
        if self.best_answer is not None and self.best_answer not in self.true_answers:
            raise DatasetError(
                f"record {self.id!r}: best_answer {self.best_answer!r} is not among its true answers"
            )

    @property
    def answers(self) -> list[tuple[str, int]]:
        """Every answer with its label: true answers (1) first, then false answers (0)."""
        return [(a, 1) for a in self.true_answers] + [(a, 0) for a in self.false_answers]


def check_unique_questions(records: list[QARecord], source: str) -> None:
    """Refuse a dataset where one question text appears twice (it could land in two splits)."""
    seen: dict[str, str] = {}
    for record in records:
        key = " ".join(record.question.lower().split())
        if key in seen:
            raise DatasetError(
                f"{source}: question {record.question!r} appears twice (ids {seen[key]!r} and {record.id!r})"
            )
        seen[key] = record.id
