import dataclasses

import pytest
import torch
from reference_loop import decisions, reference_generate, splitting_thresholds

from fasb_tl.generation import METHODS, GenerationConfig, GenerationConfigError, generate, generate_many
from fasb_tl.models import encode

PROMPTS = [
    "Q: Is the sky blue? A:",
    "Q: Why? A:",
    "Q: What is the boiling point of water at sea level? A:",
    "Hello",
    "Q: a b c d e f g h? A:",
]
BASE = GenerationConfig(alpha=8.0, back_steps=3, max_new_tokens=12)


@pytest.fixture(scope="module")
def thresholds(tiny_model, steerer):
    return splitting_thresholds(tiny_model, steerer, PROMPTS, BASE.back_steps, BASE.max_new_tokens)


@pytest.fixture(scope="module")
def config_for(thresholds):
    def make(method, **changes):
        threshold = thresholds["question"] if method == "question" else thresholds["monitor"]
        return dataclasses.replace(BASE, method=method, threshold=threshold, **changes)

    return make


@pytest.fixture
def frequent_token_as_eos(tiny_model):
    """Make the most frequent greedy token the EOS, so stops (and triggers at EOS) happen."""
    plain = generate(
        tiny_model, PROMPTS, None, GenerationConfig(method="none", max_new_tokens=12), progress=False
    )
    tokens = [t for r in plain for t in r.token_ids]
    tokenizer = tiny_model.tokenizer
    original = tokenizer.eos_token
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(max(set(tokens), key=tokens.count))
    yield
    tokenizer.eos_token = original


def assert_matches_reference(model, steerer, config):
    cached = generate(model, PROMPTS, steerer, config, batch_size=3, progress=False)
    for prompt, result in zip(PROMPTS, cached):
        expected = reference_generate(model, encode(model, prompt), steerer, config)
        assert decisions(result) == decisions(expected), prompt
        assert result.p_true_trace == pytest.approx(expected.p_true_trace, abs=1e-4)
    return cached


@pytest.mark.parametrize("history", ["reference", "persistent"])
@pytest.mark.parametrize("method", METHODS)
def test_cached_batched_loop_matches_the_no_cache_reference(tiny_model, steerer, config_for, method, history):
    results = assert_matches_reference(tiny_model, steerer, config_for(method, history=history))
    if method in ("fasb", "fixed", "no_backtrack", "question"):
        assert any(r.triggered for r in results) and not all(r.triggered for r in results)


@pytest.mark.parametrize("history", ["reference", "persistent"])
@pytest.mark.parametrize("method", ["fasb", "no_backtrack", "iti", "question"])
def test_cached_loop_matches_the_reference_when_rows_stop_at_eos(
    tiny_model, steerer, config_for, frequent_token_as_eos, method, history
):
    results = assert_matches_reference(tiny_model, steerer, config_for(method, history=history))
    assert any(len(r.token_ids) < BASE.max_new_tokens for r in results)


@pytest.mark.parametrize("history", ["reference", "persistent"])
def test_batch_results_equal_batch_size_one(tiny_model, steerer, config_for, history):
    config = config_for("fasb", history=history)
    batched = generate(tiny_model, PROMPTS, steerer, config, batch_size=5, progress=False)
    single = generate(tiny_model, PROMPTS, steerer, config, batch_size=1, progress=False)
    assert [decisions(r) for r in batched] == [decisions(r) for r in single]


@pytest.mark.parametrize("history", ["reference", "persistent"])
def test_rows_of_different_configs_in_one_batch_equal_each_config_alone(
    tiny_model, steerer, config_for, frequent_token_as_eos, history
):
    configs = {method: config_for(method, history=history) for method in METHODS}
    configs["short"] = config_for("fasb", history=history, max_new_tokens=5, stop_at_eos=False)
    together = generate_many(tiny_model, PROMPTS, steerer, configs, batch_size=7, progress=False)
    assert list(together) == list(configs)
    for name, config in configs.items():
        alone = generate(tiny_model, PROMPTS, steerer, config, batch_size=1, progress=False)
        assert [decisions(r) for r in together[name]] == [decisions(r) for r in alone], name
        for mixed, single in zip(together[name], alone):
            assert mixed.p_true_trace == pytest.approx(single.p_true_trace, abs=1e-4)


def test_alpha_zero_gives_the_unsteered_tokens(tiny_model, steerer):
    plain = generate(
        tiny_model, PROMPTS, None, GenerationConfig(method="none", max_new_tokens=12), progress=False
    )
    for method in METHODS:
        config = dataclasses.replace(BASE, method=method, alpha=0.0, threshold=1.0)
        steered = generate(tiny_model, PROMPTS, steerer, config, progress=False)
        assert [r.token_ids for r in steered] == [r.token_ids for r in plain], method


def test_unsteered_tokens_equal_the_bridges_own_greedy_generate(tiny_model):
    ids = torch.tensor([encode(tiny_model, PROMPTS[0])])
    expected = tiny_model.generate(ids, max_new_tokens=12, do_sample=False, verbose=False, stop_at_eos=False)
    config = GenerationConfig(method="none", max_new_tokens=12, stop_at_eos=False)
    result = generate(tiny_model, [PROMPTS[0]], None, config, progress=False)[0]
    assert result.token_ids == expected[0, ids.shape[1] :].tolist()


def test_threshold_zero_never_triggers(tiny_model, steerer):
    for method in ("fasb", "fixed", "no_backtrack", "question"):
        config = dataclasses.replace(BASE, method=method, threshold=0.0)
        assert not any(r.triggered for r in generate(tiny_model, PROMPTS, steerer, config, progress=False))


@pytest.mark.parametrize("back_steps", [0, 3, 20])
def test_threshold_above_one_triggers_at_the_first_check(tiny_model, steerer, back_steps):
    config = dataclasses.replace(BASE, threshold=1.5, force_threshold=True, back_steps=back_steps)
    for result in generate(tiny_model, PROMPTS, steerer, config, progress=False):
        first_check = min(max(back_steps, 1), config.max_new_tokens)
        assert result.triggered and result.trigger_step == first_check
        assert result.n_removed == min(back_steps, first_check)
        assert result.steered_from == first_check - result.n_removed >= 0
        assert len(result.token_ids) == config.max_new_tokens


@pytest.mark.parametrize("method", ["fasb", "fixed"])
def test_a_trigger_at_the_budget_without_backtracking_stays_within_max_new_tokens(
    tiny_model, steerer, method
):
    config = dataclasses.replace(
        BASE, method=method, threshold=1.5, force_threshold=True, back_steps=0, max_new_tokens=1
    )
    for prompt, result in zip(PROMPTS, generate(tiny_model, PROMPTS, steerer, config, progress=False)):
        assert result.triggered and len(result.token_ids) == 1
        assert decisions(result) == decisions(
            reference_generate(tiny_model, encode(tiny_model, prompt), steerer, config)
        )


@pytest.mark.parametrize("history", ["reference", "persistent"])
@pytest.mark.parametrize("method", ["fasb", "fixed"])
def test_a_trigger_on_a_kept_eos_ends_the_answer(tiny_model, steerer, method, history):
    """back_steps 0 keeps the token that triggered; when it is EOS the answer is finished (the released code
    would generate past it)."""
    ids = encode(tiny_model, PROMPTS[0])
    plain = generate(
        tiny_model, [ids], None, GenerationConfig(method="none", max_new_tokens=1), progress=False
    )
    tokenizer = tiny_model.tokenizer
    original = tokenizer.eos_token
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(plain[0].token_ids[0])
    try:
        config = dataclasses.replace(
            BASE, method=method, history=history, threshold=2.0, force_threshold=True, back_steps=0
        )
        result = generate(tiny_model, [ids], steerer, config, progress=False)[0]
        assert result.token_ids == plain[0].token_ids and result.triggered and result.trigger_step == 1
        assert result.removed_token_ids == [] and result.steered_from is None
        assert decisions(result) == decisions(reference_generate(tiny_model, ids, steerer, config))
        longer = generate(
            tiny_model, [ids], steerer, dataclasses.replace(config, stop_at_eos=False), progress=False
        )[0]
        assert len(longer.token_ids) == config.max_new_tokens
    finally:
        tokenizer.eos_token = original


def test_removed_tokens_never_reach_into_the_prompt(tiny_model, steerer):
    config = dataclasses.replace(BASE, threshold=0.5, back_steps=6)
    for result in generate(tiny_model, PROMPTS, steerer, config, progress=False):
        if result.triggered:
            assert result.n_removed <= min(config.back_steps, result.trigger_step)
            assert result.steered_from == result.trigger_step - result.n_removed


def test_large_alpha_changes_the_output(tiny_model, steerer):
    plain = generate(
        tiny_model, PROMPTS, None, GenerationConfig(method="none", max_new_tokens=12), progress=False
    )
    config = dataclasses.replace(BASE, method="iti", alpha=200.0)
    steered = generate(tiny_model, PROMPTS, steerer, config, progress=False)
    assert sum(a.token_ids != b.token_ids for a, b in zip(plain, steered)) >= 4


def test_an_exception_inside_the_loop_leaves_no_hooks(tiny_model, steerer, monkeypatch):
    ids = torch.tensor([encode(tiny_model, PROMPTS[0])])
    before = tiny_model(ids)

    def explode(*args, **kwargs):
        raise RuntimeError("hook failure")

    monkeypatch.setattr(type(steerer), "p_true", explode)
    with pytest.raises(RuntimeError, match="hook failure"):
        generate(tiny_model, PROMPTS, steerer, BASE, progress=False)
    monkeypatch.undo()
    assert torch.equal(tiny_model(ids), before)
    assert all(not hook_point._forward_hooks for hook_point in tiny_model.hook_dict.values())


def test_sampling_is_seeded(tiny_model, steerer):
    config = dataclasses.replace(BASE, do_sample=True, seed=3)
    first = generate(tiny_model, PROMPTS, steerer, config, progress=False)
    again = generate(tiny_model, PROMPTS, steerer, config, batch_size=2, progress=False)
    other = generate(tiny_model, PROMPTS, steerer, dataclasses.replace(config, seed=4), progress=False)
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    assert [r.token_ids for r in first] != [r.token_ids for r in other]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("alpha", -1.0, "alpha must be >= 0"),
        ("alpha", float("inf"), "alpha must be >= 0 and finite in float32 .*got inf"),
        ("alpha", float("nan"), "alpha must be >= 0 and finite in float32 .*got nan"),
        ("threshold", 1.2, "threshold must be in \\[0, 1\\]"),
        ("back_steps", -1, "back_steps must be >= 0"),
        ("max_new_tokens", 0, "max_new_tokens must be >= 1"),
        ("method", "magic", "method must be one of"),
        ("history", "sometimes", "history must be"),
    ],
)
def test_config_is_validated(field, value, message):
    with pytest.raises(GenerationConfigError, match=message):
        GenerationConfig(**{field: value})


def test_steering_methods_need_a_steerer(tiny_model):
    with pytest.raises(GenerationConfigError, match="needs a Steerer"):
        generate(tiny_model, PROMPTS, None, GenerationConfig(method="fasb"), progress=False)


@pytest.mark.parametrize("method", ["fasb", "iti", "question", "none"])
def test_prefix_cached_generation_equals_uncached(tiny_model, steerer, config_for, method):
    from fasb_tl.prefix import build_prefix_cache

    shared = "Answer briefly.\n\nQ: Is it? A: Yes.\n\n"
    prompts = [shared + p for p in PROMPTS]
    prefix = build_prefix_cache(tiny_model, shared)
    config = config_for(method)
    plain = generate(tiny_model, prompts, steerer, config, batch_size=3, progress=False)
    cached = generate(tiny_model, prompts, steerer, config, prefix=prefix, batch_size=3, progress=False)
    assert [decisions(r) for r in plain] == [decisions(r) for r in cached]
