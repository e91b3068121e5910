"""A text-only baseline detector: bag-of-words logistic regression on the answer text alone.

If a detector that never sees the model separates true from false answers about as well as the head probes,
the probes' signal is mostly the wording of the answer, not something the model represents about truth; the
paper's per-candidate MC protocol rewards exactly that. Report it next to the probes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline

from fasb_tl.data.records import DatasetError, QARecord


def answer_texts(records: Sequence[QARecord]) -> tuple[list[str], np.ndarray]:
    """Every answer of every record (the probe bank's order) and its label (1 true, 0 false)."""
    if not records:
        raise DatasetError("text baseline: got no records (expected at least one question)")
    answers, labels = [], []
    for record in records:
        for answer, label in record.answers:
            answers.append(answer)
            labels.append(label)
    return answers, np.asarray(labels, dtype=np.int64)


def detection_metrics(p_true: Sequence[float], labels: Sequence[int]) -> dict[str, float]:
    """Accuracy (P(true) >= 0.5 means "true") and AUROC of a detector's P(true) against labels."""
    p = np.asarray(p_true, dtype=np.float64)
    y = np.asarray(labels)
    if len(set(y.tolist())) < 2:
        raise DatasetError(f"detection metrics need both labels, got only {sorted(set(y.tolist()))}")
    return {"accuracy": float(((p >= 0.5) == (y == 1)).mean()), "auroc": float(roc_auc_score(y, p))}


class TextOnlyDetector:
    """Word uni- and bigram counts -> logistic regression, sklearn-style ``fit`` / ``predict_proba``."""

    def __init__(self, C: float = 1.0, ngram_range: tuple[int, int] = (1, 2), seed: int = 0):
        if not C > 0:
            raise ValueError(f"C must be > 0, got {C}")
        self.C, self.ngram_range, self.seed = C, ngram_range, seed
        self.pipeline_: Pipeline | None = None

    def fit(self, answers: Sequence[str], labels: Sequence[int]) -> TextOnlyDetector:
        y = np.asarray(labels)
        if len(answers) != len(y) or len(set(y.tolist())) < 2:
            raise DatasetError(
                f"text baseline: need equally many answers and labels with both classes, got "
                f"{len(answers)} answers and labels {sorted(set(y.tolist()))}"
            )
        self.pipeline_ = make_pipeline(
            CountVectorizer(ngram_range=self.ngram_range, lowercase=True),
            LogisticRegression(C=self.C, max_iter=2000, random_state=self.seed),
        ).fit(list(answers), y)
        return self

    def predict_proba(self, answers: Sequence[str]) -> np.ndarray:
        """P(true) of each answer, shape [n] (not sklearn's [n, 2]: only the "true" column matters here)."""
        if self.pipeline_ is None:
            raise ValueError("the detector is not fitted yet; call fit() first")
        return self.pipeline_.predict_proba(list(answers))[:, 1]

    def score(self, answers: Sequence[str], labels: Sequence[int]) -> dict[str, float]:
        """Accuracy and AUROC on held-out answers."""
        return detection_metrics(self.predict_proba(answers), labels)
