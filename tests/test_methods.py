"""The method table and the trigger rule that the decode loop and the scorer share (``fasb_tl.methods``)."""

import random

import pytest
import torch

from fasb_tl.cli import build_parser
from fasb_tl.evaluation.runner import EvalPlan
from fasb_tl.evaluation.tables import METHOD_ORDER
from fasb_tl.generation import METHODS, GenerationConfig
from fasb_tl.methods import (
    ALL_METHODS,
    CONTROLLED_METHODS,
    GATED_METHODS,
    MONITORING_METHODS,
    SPECS,
    UnknownMethodError,
    decide,
    first_trigger,
    generation_checks,
    scoring_checks,
)
from fasb_tl.scoring import PROTOCOL_METHODS, SCORING_METHODS, ScoringConfig, _paper_decision


def test_every_method_list_comes_from_the_table():
    assert ALL_METHODS == ("none", "iti", "caa", "question", "no_backtrack", "fixed", "fasb")
    assert METHODS == SCORING_METHODS == tuple(m for m in ALL_METHODS if m != "caa")
    assert MONITORING_METHODS == PROTOCOL_METHODS == ("no_backtrack", "fixed", "fasb")
    assert GATED_METHODS == ("question", "no_backtrack", "fixed", "fasb")
    assert CONTROLLED_METHODS == ("iti", "question", "no_backtrack", "fixed", "fasb")
    assert METHOD_ORDER == ALL_METHODS
    eval_args = build_parser().parse_args(["eval"])
    assert eval_args.methods.split(",") == list(ALL_METHODS)
    for method in METHODS:
        assert GenerationConfig(method=method).spec is SPECS[method] is ScoringConfig(method=method).spec


def test_a_plan_with_an_unknown_method_is_refused_before_it_runs():
    with pytest.raises(UnknownMethodError, match=r"\['fasbb'\].*'fasb'"):
        EvalPlan(tasks=["copa"], methods=["none", "fasbb"])


def test_decide_keeps_tokens_by_backtracking_and_scales_by_adaptivity():
    fasb, fixed, no_backtrack, question = (SPECS[m] for m in ("fasb", "fixed", "no_backtrack", "question"))
    assert decide(fasb, 0.6, 5, 2, threshold=0.6) is None  # p_true must be strictly below the threshold
    trigger = decide(fasb, 0.25, 5, 2, threshold=0.6)
    assert (trigger.kept, trigger.strength, trigger.p_true) == (3, 0.75, 0.25)
    assert decide(fasb, 0.25, 1, 2, threshold=0.6).kept == 0
    assert (decide(fixed, 0.25, 5, 2, 0.6).kept, decide(fixed, 0.25, 5, 2, 0.6).strength) == (3, 1.0)
    assert (decide(no_backtrack, 0.25, 5, 2, 0.6).kept, decide(no_backtrack, 0.25, 5, 2, 0.6).strength) == (
        5,
        0.75,
    )
    assert decide(question, 0.25, 0, 2, 0.6).kept == 0


def test_the_scoring_schedule_waits_one_token_longer_than_generation():
    fasb = SPECS["fasb"]
    trace = [0.9, 0.1, 0.9, 0.9]
    assert [generation_checks(n, 2, n == 4) for n in range(1, 5)] == [False, True, True, True]
    assert [scoring_checks(n, 2, n == 4) for n in range(1, 5)] == [False, False, True, True]
    assert first_trigger(fasb, trace, 2, 0.5)[0] == 2
    assert first_trigger(fasb, trace, 2, 0.5, scoring_checks) is None
    # The end of the answer is always checked, even before back_steps tokens exist.
    assert first_trigger(fasb, [0.9, 0.1], 5, 0.5, scoring_checks)[0] == 2


def released_mc_scan(p_true, start, length, method, back_steps, threshold):
    """The released code's per-candidate scan (the scorer's rule before the method table existed)."""
    skipped = 0
    for position in range(start, length):
        if skipped < back_steps and position != length - 1:
            skipped += 1
            continue
        value = float(p_true[position - start + 1])
        if value < threshold:
            if method == "no_backtrack":
                return position, 1.0 - value
            strength = 1.0 - value if method == "fasb" else 1.0
            return max(position - back_steps, start - 1), strength
    return None


def test_the_paper_protocol_scan_equals_the_released_code_on_random_traces():
    rng = random.Random(0)
    for _ in range(2000):
        method = rng.choice(MONITORING_METHODS)
        start, answer = rng.randint(1, 9), rng.randint(1, 8)
        p_true = torch.tensor([rng.random() for _ in range(answer + 1)])
        config = ScoringConfig(method=method, back_steps=rng.randint(0, 6), threshold=rng.random())
        expected = released_mc_scan(
            p_true, start, start + answer, method, config.back_steps, config.threshold
        )
        got = _paper_decision(p_true, start, start + answer, config)
        assert got == (expected if expected is None else pytest.approx(expected)), (method, config)
