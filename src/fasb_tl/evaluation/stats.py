"""Uncertainty for every metric: bootstrap confidence intervals over questions and paired tests vs a baseline.

Every statistic here is a product of means of per-question arrays (one array: a plain mean such as MC2 or
accuracy; two arrays: True*Info as the paper computes it, mean(True) x mean(Info)). Questions are resampled
jointly across the arrays, so the pairing of a question's True and Info (or of a method and its baseline on
the same question) is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_PERMUTATIONS = 10000
# Permutations drawn at once (bounds memory to ~chunk x arrays x questions floats).
PERMUTATION_CHUNK = 500


def product_of_means(arrays: np.ndarray) -> np.ndarray:
    """``arrays`` [..., n_arrays, n_questions] -> the product over arrays of each array's mean, shape [...]."""
    return np.prod(arrays.mean(axis=-1), axis=-1)


def _stack(samples: Sequence[Sequence[float]]) -> np.ndarray:
    arrays = np.asarray([np.asarray(s, dtype=float) for s in samples])
    if arrays.ndim != 2 or arrays.shape[1] == 0:
        raise ValueError(f"expected one or more equally long, non-empty arrays, got shape {arrays.shape}")
    if not np.isfinite(arrays).all():
        raise ValueError("per-question values contain NaN or infinite values")
    return arrays


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile-bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def bootstrap_ci(
    *samples: Sequence[float],
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap CI of the product of the samples' means, resampling questions jointly."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    arrays = _stack(samples)
    n = arrays.shape[1]
    picks = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    stats = product_of_means(arrays[:, picks].transpose(1, 0, 2))
    tail = (1 - confidence) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return Interval(float(product_of_means(arrays)), float(low), float(high), confidence)


@dataclass(frozen=True)
class PairedTest:
    """A method vs its baseline on the same questions: the difference, its bootstrap CI, a permutation p-value."""

    difference: float
    low: float
    high: float
    p_value: float

    def significant(self, level: float = 0.05) -> bool:
        return self.p_value < level


def paired_test(
    treated: Sequence[Sequence[float]],
    baseline: Sequence[Sequence[float]],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    n_permutations: int = DEFAULT_PERMUTATIONS,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedTest:
    """Difference of the product-of-means statistic, treated minus baseline, on aligned questions.

    ``treated`` and ``baseline`` are each a list of per-question arrays (e.g. ``[mc2]`` or ``[true, info]``),
    aligned question by question. The p-value is two-sided, from a paired permutation test: under the null
    the two methods are exchangeable on every question, so each question's values are swapped between them
    with probability 1/2 (all of its arrays together).
    """
    a, b = _stack(treated), _stack(baseline)
    if a.shape != b.shape:
        raise ValueError(f"treated {a.shape} and baseline {b.shape} must hold the same questions")
    rng = np.random.default_rng(seed)
    observed = float(product_of_means(a) - product_of_means(b))
    n = a.shape[1]
    picks = rng.integers(0, n, size=(n_resamples, n))
    boot = product_of_means(a[:, picks].transpose(1, 0, 2)) - product_of_means(b[:, picks].transpose(1, 0, 2))
    tail = (1 - confidence) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    extreme = 0
    for start in range(0, n_permutations, PERMUTATION_CHUNK):
        swap = rng.random((min(PERMUTATION_CHUNK, n_permutations - start), 1, n)) < 0.5
        permuted = product_of_means(np.where(swap, b, a)) - product_of_means(np.where(swap, a, b))
        # Ties count against significance; the +1s below make this a valid p-value (never exactly 0).
        extreme += int(np.count_nonzero(np.abs(permuted) >= abs(observed) - 1e-12))
    p_value = (1 + extreme) / (1 + n_permutations)
    return PairedTest(observed, float(low), float(high), float(p_value))
