"""Question-level splits: every answer of a question lands in the same split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fasb_tl.data.records import DatasetError


@dataclass(frozen=True)
class Split:
    """Question indices for probe training, head selection (validation) and evaluation (test)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def __post_init__(self) -> None:
        parts = {"train": self.train, "val": self.val, "test": self.test}
        names = list(parts)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                shared = np.intersect1d(parts[a], parts[b])
                if shared.size:
                    raise DatasetError(f"split puts question(s) {shared[:5].tolist()} in both {a} and {b}")


def question_splits(
    n_questions: int, n_folds: int = 2, val_fraction: float = 0.2, seed: int = 42, shuffle: bool = False
) -> list[Split]:
    """K-fold splits over questions in dataset order, as the ITI/FASB code makes them.

    ``shuffle=True`` first permutes the questions (seeded), for datasets stored grouped by topic such as the
    built-in one; TruthfulQA keeps ``shuffle=False`` for parity with the reference.

    Fold i is the test set; the other folds form a pool from which ``1 - val_fraction`` of the questions
    (rounded down) are drawn for training, the rest are validation. One ``RandomState(seed)`` is drawn from
    fold after fold, exactly like the reference's ``np.random.seed(seed)`` followed by its fold loop.
    """
    if n_folds < 2:
        raise DatasetError(f"n_folds must be >= 2, got {n_folds}")
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if n_questions < 2 * n_folds:
        raise DatasetError(f"need at least {2 * n_folds} questions for {n_folds} folds, got {n_questions}")
    rng = np.random.RandomState(seed)
    order = rng.permutation(n_questions) if shuffle else np.arange(n_questions)
    folds = [np.sort(fold) for fold in np.array_split(order, n_folds)]
    splits = []
    for i, test in enumerate(folds):
        pool = np.concatenate([f for j, f in enumerate(folds) if j != i])
        train = rng.choice(pool, size=int(len(pool) * (1 - val_fraction)), replace=False)
        val = np.setdiff1d(pool, train)
        if train.size == 0 or val.size == 0:
            raise DatasetError(
                f"val_fraction {val_fraction} leaves an empty train or val split of {len(pool)} questions"
            )
        splits.append(Split(train=np.sort(train), val=val, test=test))
    return splits
