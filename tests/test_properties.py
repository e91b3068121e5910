"""Property tests (hypothesis) of the decode loop on the tiny model: random small configs and prompts.

Examples are derandomised so CI sees the same cases on every run.
"""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference_loop import reference_generate

from fasb_tl.generation import GenerationConfig, generate
from fasb_tl.models import encode

PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

prompts = st.lists(st.text(alphabet="abcdefgh ?QA:.", min_size=1, max_size=24), min_size=1, max_size=3)
configs = st.builds(
    GenerationConfig,
    method=st.sampled_from(["iti", "question", "no_backtrack", "fixed", "fasb"]),
    alpha=st.floats(0.5, 20.0),
    threshold=st.floats(0.05, 0.95),
    back_steps=st.integers(0, 8),
    max_new_tokens=st.integers(1, 10),
    history=st.sampled_from(["reference", "persistent"]),
)
# A decision within this distance of the threshold could flip between two float orderings of the same sums.
MARGIN = 1e-3


@PROPERTY_SETTINGS
@given(texts=prompts, config=configs)
def test_cached_loop_matches_the_no_cache_reference(tiny_model, steerer, texts, config):
    expected = [reference_generate(tiny_model, encode(tiny_model, t), steerer, config) for t in texts]
    assume(all(abs(p - config.threshold) > MARGIN for r in expected for p in r.p_true_trace))
    cached = generate(tiny_model, texts, steerer, config, batch_size=2, progress=False)
    for got, want in zip(cached, expected):
        assert got.token_ids == want.token_ids
        assert (got.triggered, got.trigger_step, got.removed_token_ids, got.steered_from) == (
            want.triggered,
            want.trigger_step,
            want.removed_token_ids,
            want.steered_from,
        )


@PROPERTY_SETTINGS
@given(texts=prompts, config=configs)
def test_alpha_zero_never_changes_tokens(tiny_model, steerer, texts, config):
    plain = generate(tiny_model, texts, None, dataclasses.replace(config, method="none"), progress=False)
    steered = generate(tiny_model, texts, steerer, dataclasses.replace(config, alpha=0.0), progress=False)
    assert [r.token_ids for r in steered] == [r.token_ids for r in plain]


@PROPERTY_SETTINGS
@given(texts=prompts, config=configs)
def test_removed_tokens_stay_within_back_steps_and_the_answer(tiny_model, steerer, texts, config):
    for result in generate(tiny_model, texts, steerer, config, progress=False):
        assert result.n_removed <= config.back_steps
        if result.triggered and config.method != "question":
            assert result.n_removed <= result.trigger_step
            # None: the trigger came at the last token and nothing was removed, so nothing was steered.
            if result.steered_from is None:
                assert result.n_removed == 0 and result.trigger_step == len(result.token_ids)
            else:
                assert result.steered_from == result.trigger_step - result.n_removed >= 0
        if config.method in ("iti", "no_backtrack", "question"):
            assert result.n_removed == 0
        assert 1 <= len(result.token_ids) <= config.max_new_tokens


@PROPERTY_SETTINGS
@given(texts=prompts, config=configs, seed=st.integers(0, 2**31 - 1), temperature=st.floats(0.5, 2.0))
def test_the_same_seed_gives_the_same_results(tiny_model, steerer, texts, config, seed, temperature):
    sampled = dataclasses.replace(config, do_sample=True, seed=seed, temperature=temperature)
    first = generate(tiny_model, texts, steerer, sampled, progress=False)
    second = generate(tiny_model, texts, steerer, sampled, progress=False)
    assert [dataclasses.asdict(r) for r in first] == [dataclasses.asdict(r) for r in second]
