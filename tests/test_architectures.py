"""The cached, batched decode loop and scoring hold on every architecture the bridge supports, sliding-window
attention included: tiny random Llama, GPT-2, GPT-NeoX, Qwen2 (full layer 0, sliding layers 1-2), Mistral
(every layer sliding) and Gemma 3 (sliding, full, sliding), each window 8 positions, held against the no-cache
reference loop for every method and history, at batch 1 and in mixed-length batches."""

import dataclasses

import pytest
import torch
from reference_loop import decisions, full_forward_log_likelihood, reference_generate, splitting_thresholds

from fasb_tl.data import dataset_splits, load_builtin
from fasb_tl.fitting import fit_steerer
from fasb_tl.generation import METHODS, GenerationConfig, generate
from fasb_tl.models import TINY_ARCHITECTURES, TINY_WINDOW, encode, load_model
from fasb_tl.prefix import build_prefix_cache
from fasb_tl.scoring import ScoringConfig, score_choices

# Lengths with BOS: 3 (the window fills during generation), 11, 23 and 55 (full before the first token).
PROMPTS = [
    "Hi",
    "Q: Why? A:",
    "Q: Is the sky blue? A:",
    "Q: What is the boiling point of water at sea level? A:",
]
BASE = GenerationConfig(alpha=8.0, back_steps=3, max_new_tokens=12)


@pytest.fixture(scope="module", params=TINY_ARCHITECTURES)
def setup(request):
    model = load_model(f"tiny-random-{request.param}")
    records = load_builtin()
    steerer = fit_steerer(model, records, dataset_splits("builtin", len(records))[0], k=4, progress=False)
    thresholds = splitting_thresholds(model, steerer, PROMPTS, BASE.back_steps, BASE.max_new_tokens)
    return request.param, model, steerer, thresholds


def config_for(thresholds, method, **changes):
    threshold = thresholds["question"] if method == "question" else thresholds["monitor"]
    return dataclasses.replace(BASE, method=method, threshold=threshold, **changes)


def assert_matches_reference(model, steerer, config, batch_size):
    results = generate(model, PROMPTS, steerer, config, batch_size=batch_size, progress=False)
    for prompt, result in zip(PROMPTS, results):
        expected = reference_generate(model, encode(model, prompt), steerer, config)
        assert decisions(result) == decisions(expected), prompt
        assert result.p_true_trace == pytest.approx(expected.p_true_trace, abs=1e-4), prompt
    return results


def test_sliding_window_models_have_windows_the_prompts_exceed(setup):
    architecture, model, _, _ = setup
    config = model.original_model.config
    if architecture in ("qwen2", "mistral", "gemma3"):
        assert config.sliding_window == TINY_WINDOW
        assert max(len(encode(model, p)) for p in PROMPTS) > TINY_WINDOW > len(encode(model, PROMPTS[0]))


@pytest.mark.parametrize("history", ["reference", "persistent"])
@pytest.mark.parametrize("method", METHODS)
def test_batched_loop_matches_the_reference_on_every_architecture(setup, method, history):
    _, model, steerer, thresholds = setup
    results = assert_matches_reference(model, steerer, config_for(thresholds, method, history=history), 4)
    if method in ("fasb", "fixed", "no_backtrack", "question"):
        assert any(r.triggered for r in results) and not all(r.triggered for r in results)


@pytest.mark.parametrize("history", ["reference", "persistent"])
@pytest.mark.parametrize("method", ["fasb", "no_backtrack", "question", "iti"])
def test_batch_size_one_matches_the_reference_on_every_architecture(setup, method, history):
    _, model, steerer, thresholds = setup
    assert_matches_reference(model, steerer, config_for(thresholds, method, history=history), 1)


@pytest.mark.parametrize("history", ["reference", "persistent"])
@pytest.mark.parametrize("back_steps", [0, 1, 3])
def test_always_triggering_rollbacks_match_the_reference(setup, back_steps, history):
    """Threshold above 1: every row triggers at its first check, the short prompt before its window is full."""
    _, model, steerer, _ = setup
    for method in ("fasb", "fixed", "no_backtrack"):
        config = dataclasses.replace(
            BASE, method=method, threshold=2.0, force_threshold=True, back_steps=back_steps, history=history
        )
        results = assert_matches_reference(model, steerer, config, 4)
        assert all(r.triggered for r in results)


def test_prefix_cached_generation_and_scoring_match_uncached(setup):
    _, model, steerer, thresholds = setup
    prefix_text = "Answer truthfully.\n\nQ: Is water wet? A: Yes.\n\n"
    prompts = [prefix_text + p for p in PROMPTS]
    prefix = build_prefix_cache(model, prefix_text)
    config = config_for(thresholds, "fasb")
    plain = generate(model, prompts, steerer, config, batch_size=4, progress=False)
    cached = generate(model, prompts, steerer, config, prefix=prefix, batch_size=4, progress=False)
    assert [decisions(r) for r in plain] == [decisions(r) for r in cached]
    options = [[" Yes.", " No, never at all."], [" Blue."], [" Because.", " It is not."], [" 100 C."]]
    for scoring in (ScoringConfig(method="iti", alpha=8.0), ScoringConfig(method="fasb", threshold=1.0)):
        alone = [
            score_choices(model, [p], [o], steerer, scoring, batch_size=1, progress=False)[0]
            for p, o in zip(prompts, options)
        ]
        together = score_choices(model, prompts, options, steerer, scoring, prefix=prefix, progress=False)
        for a, b in zip(alone, together):
            assert torch.allclose(a.scores, b.scores, atol=1e-4)
            assert a.strengths == pytest.approx(b.strengths, abs=1e-4)


def test_batched_unsteered_scores_equal_a_full_forward_log_likelihood(setup):
    """Contexts of different lengths (shorter and longer than the window) and options of different lengths in
    one padded batch: every score equals the log-likelihood of one uncached forward over context + option."""
    _, model, _, _ = setup
    options = [[" Yes.", " No, never at all."], [" Blue."], [" Because.", " It is not."], [" 100 C."]]
    results = score_choices(model, PROMPTS, options, None, ScoringConfig(method="none"), progress=False)
    for context, choices, result in zip(PROMPTS, options, results):
        for option, score in zip(choices, result.scores):
            expected = full_forward_log_likelihood(model, context, option)
            assert score.item() == pytest.approx(expected, abs=1e-4), (context, option)
