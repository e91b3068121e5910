"""Careless inputs to the library's entry points (issue: reliability, round 2): each gets a clear error naming
the value and what was expected, before any work, instead of a silent wrong result."""

import numpy as np
import pytest
import torch

from fasb_tl import collect_head_activations
from fasb_tl.activations import NonFiniteActivationError
from fasb_tl.generation import GenerationConfig, GenerationConfigError, generate
from fasb_tl.models import encode
from fasb_tl.scoring import ScoringConfig, ScoringConfigError, score_choices

PROMPT = "Q: Is fire hot? A:"


@pytest.mark.parametrize(
    "call",
    [
        lambda model, steerer: generate(model, PROMPT, steerer, progress=False),
        lambda model, steerer: collect_head_activations(model, PROMPT, progress=False),
        lambda model, steerer: score_choices(
            model, PROMPT, [[" a", " b"]], steerer, ScoringConfig(), progress=False
        ),
        lambda model, steerer: score_choices(
            model, [PROMPT], " yes", steerer, ScoringConfig(), progress=False
        ),
        lambda model, steerer: score_choices(
            model, [PROMPT], [" yes"], steerer, ScoringConfig(), progress=False
        ),
    ],
    ids=[
        "generate",
        "collect_head_activations",
        "score contexts",
        "score options",
        "score one item's options",
    ],
)
def test_a_bare_string_is_refused_instead_of_split_into_characters(tiny_model, steerer, call):
    with pytest.raises(TypeError, match=r"must be a list of prompts, got one str .*pass \[prompt\]"):
        call(tiny_model, steerer)


@pytest.mark.parametrize(
    ("token", "shown"),
    [(1.5, "1.5"), (-1, "-1"), (100, "100"), (True, "True"), ("7", "'7'")],
)
def test_token_ids_must_be_integers_inside_the_vocabulary(tiny_model, token, shown):
    prompt = [*encode(tiny_model, PROMPT), token]
    with pytest.raises(ValueError, match=rf"prompt 0: token id {shown} is not an integer in \[0, 100\)"):
        generate(tiny_model, [prompt], None, GenerationConfig(method="none"), progress=False)


def test_token_ids_as_numpy_integers_and_tensors_are_accepted(tiny_model):
    ids = encode(tiny_model, PROMPT)
    config = GenerationConfig(method="none", max_new_tokens=3)
    plain = generate(tiny_model, [ids], None, config, progress=False)
    as_numpy = generate(tiny_model, [np.array(ids)], None, config, progress=False)
    as_tensor = generate(tiny_model, [torch.tensor(ids)], None, config, progress=False)
    assert plain[0].token_ids == as_numpy[0].token_ids == as_tensor[0].token_ids


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_new_tokens", 2.5, r"max_new_tokens must be an integer, got 2.5 \(float\)"),
        ("max_new_tokens", True, r"max_new_tokens must be an integer, got True \(bool\)"),
        ("back_steps", 2.5, "back_steps must be an integer"),
        ("alpha", True, r"alpha must be a number, got True \(bool\)"),
        ("alpha", "15", "alpha must be a number, got '15'"),
        ("threshold", "0.5", "threshold must be a number"),
        ("seed", 2**70, r"seed must be in \[0, 2\*\*63\)"),
        ("seed", -1, r"seed must be in \[0, 2\*\*63\)"),
        ("seed", 1.0, "seed must be an integer"),
        ("temperature", float("inf"), "temperature must be > 0 and finite when sampling"),
    ],
)
def test_generation_settings_have_exact_types_and_ranges(field, value, message):
    with pytest.raises(GenerationConfigError, match=message):
        GenerationConfig(do_sample=True, **{field: value})


def test_scoring_settings_have_exact_types():
    with pytest.raises(ScoringConfigError, match="back_steps must be an integer"):
        ScoringConfig(back_steps=2.5)
    with pytest.raises(ScoringConfigError, match="alpha must be >= 0 and finite in float32 .*got inf"):
        ScoringConfig(alpha=float("inf"))


def test_sampling_at_a_tiny_temperature_is_greedy_not_nan(tiny_model):
    greedy = generate(
        tiny_model, [PROMPT], None, GenerationConfig(method="none", max_new_tokens=6), progress=False
    )
    config = GenerationConfig(method="none", max_new_tokens=6, do_sample=True, temperature=1e-300)
    cold = generate(tiny_model, [PROMPT], None, config, progress=False)
    assert cold[0].token_ids == greedy[0].token_ids


def _poison(model):
    """A user hook that makes every residual stream NaN: the model now overflows whatever the steering."""
    return model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda resid, hook: resid * float("nan"))])


def test_non_finite_logits_stop_generation_naming_the_config(tiny_model, steerer):
    config = GenerationConfig(method="iti", alpha=7.0, max_new_tokens=3)
    with _poison(tiny_model), pytest.raises(NonFiniteActivationError, match="method 'iti' with alpha 7.0"):
        generate(tiny_model, [PROMPT], steerer, config, progress=False)


def test_non_finite_scores_stop_scoring_instead_of_letting_the_first_option_win(tiny_model, steerer):
    with _poison(tiny_model), pytest.raises(NonFiniteActivationError, match="answer scores unsteered"):
        score_choices(
            tiny_model, [PROMPT], [[" yes", " no"]], steerer, ScoringConfig(method="none"), progress=False
        )


def test_an_alpha_beyond_float32_is_refused_before_any_forward():
    with pytest.raises(GenerationConfigError, match=r"at most 3.40e\+38\), got 1e\+300"):
        GenerationConfig(method="iti", alpha=1e300)
