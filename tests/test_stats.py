import numpy as np
import pytest

from fasb_tl.evaluation.stats import bootstrap_ci, paired_test
from fasb_tl.evaluation.tables import Column, uncertainty_table


def test_bootstrap_ci_matches_the_known_standard_error():
    rng = np.random.default_rng(1)
    values = rng.normal(loc=2.0, scale=3.0, size=900)  # standard error of the mean: 3 / 30 = 0.1
    interval = bootstrap_ci(values, n_resamples=4000)
    assert interval.estimate == pytest.approx(values.mean())
    assert interval.half_width == pytest.approx(1.96 * values.std(ddof=1) / 30, rel=0.08)
    assert interval.low < values.mean() < interval.high


def test_bootstrap_ci_of_a_product_of_means_resamples_questions_jointly():
    true = np.array([1, 1, 0, 0] * 50, dtype=float)
    info = 1 - true  # perfectly anti-correlated: every resample has mean(true) + mean(info) = 1
    interval = bootstrap_ci(true, info)
    assert interval.estimate == pytest.approx(0.25)
    # p(1 - p) <= 1/4, so no joint resample can exceed the estimate.
    assert interval.high <= 0.25 + 1e-12 and interval.low < 0.25


def test_bootstrap_is_seeded_and_rejects_bad_input():
    values = np.arange(20, dtype=float)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(values, confidence=1.5)


def test_paired_test_detects_a_planted_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    baseline = rng.normal(size=300)
    shifted = baseline + 0.2 + rng.normal(scale=0.5, size=300)  # planted effect: +0.2 per question
    planted = paired_test([shifted], [baseline], n_permutations=4000)
    assert planted.significant(0.05) and planted.p_value < 0.001
    assert planted.low < 0.2 < planted.high
    null = paired_test([baseline + rng.normal(scale=0.5, size=300)], [baseline], n_permutations=4000)
    assert not null.significant(0.05)
    assert null.low < 0 < null.high


def test_paired_test_false_positive_rate_is_near_the_level():
    rng = np.random.default_rng(7)
    hits = 0
    for trial in range(200):
        a, b = rng.integers(0, 2, size=(2, 80)).astype(float)
        hits += paired_test([a], [b], n_resamples=10, n_permutations=400, seed=trial).significant(0.05)
    assert hits / 200 <= 0.09


def test_uncertainty_table_marks_non_significant_differences():
    n = 400
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, size=n).astype(float)
    better = np.maximum(base, rng.random(n) < 0.3).astype(float)  # flips ~30% of the wrong ones to right
    same = base.copy()
    same[:4] = 1 - same[:4]
    ids = [f"q{i}" for i in range(n)]

    def row(method, values):
        return {"task": "copa", "method": method, "per_item": {"correct": list(values)}, "item_ids": ids}

    rows = [row("none", base), row("iti", better), row("fasb/paper", same)]
    frame = uncertainty_table(rows, {"copa": Column("copa", ("correct",), "paper")})
    assert frame.loc["none", "copa"].startswith(f"{100 * base.mean():.1f} ± ")
    assert "(ns)" not in frame.loc["iti", "copa"] and "(ns)" not in frame.loc["none", "copa"]
    assert frame.loc["fasb", "copa"].endswith("(ns)")
