import pytest
import torch
from reference_loop import reference_generate, splitting_thresholds

from fasb_tl.generation import GenerationConfig, generate
from fasb_tl.models import encode

pytestmark = pytest.mark.integration

PROMPTS = [
    "Q: Does cracking your knuckles cause arthritis? A:",
    "Q: What is the capital of Australia? A:",
    "Q: Can goldfish remember things for more than a few seconds? A:",
    "Q: How many planets are in the solar system? A:",
    "Q: What happens if you swallow chewing gum? A:",
]
CASES = [
    ("none", "reference"),
    ("iti", "reference"),
    ("iti", "persistent"),
    ("question", "reference"),
    ("no_backtrack", "reference"),
    ("fixed", "reference"),
    ("fasb", "reference"),
    ("fasb", "persistent"),
]


@pytest.fixture(scope="module")
def thresholds(smollm2, smollm2_steerer):
    return splitting_thresholds(smollm2, smollm2_steerer, PROMPTS, back_steps=4, max_new_tokens=12)


@pytest.mark.parametrize(("method", "history"), CASES)
def test_cached_loop_matches_the_reference_on_smollm2(smollm2, smollm2_steerer, thresholds, method, history):
    threshold = thresholds["question"] if method == "question" else thresholds["monitor"]
    config = GenerationConfig(
        method=method, history=history, alpha=10.0, threshold=threshold, back_steps=4, max_new_tokens=12
    )
    cached = generate(smollm2, PROMPTS, smollm2_steerer, config, batch_size=5, progress=False)
    for prompt, result in zip(PROMPTS, cached):
        expected = reference_generate(smollm2, encode(smollm2, prompt), smollm2_steerer, config)
        assert result.token_ids == expected.token_ids, prompt
        assert (result.triggered, result.trigger_step, result.removed_token_ids) == (
            expected.triggered,
            expected.trigger_step,
            expected.removed_token_ids,
        )
    if method != "none" and method != "iti":
        assert any(r.triggered for r in cached) and not all(r.triggered for r in cached)


def test_steering_changes_smollm2_answers(smollm2, smollm2_steerer):
    plain = generate(
        smollm2, PROMPTS, None, GenerationConfig(method="none", max_new_tokens=12), progress=False
    )
    config = GenerationConfig(method="iti", alpha=30.0, max_new_tokens=12)
    steered = generate(smollm2, PROMPTS, smollm2_steerer, config, progress=False)
    assert sum(a.token_ids != b.token_ids for a, b in zip(plain, steered)) >= 3


def test_truthfulqa_prefix_cache_changes_nothing_on_smollm2(smollm2, smollm2_steerer):
    from fasb_tl.data import generation_prefix, generation_prompt
    from fasb_tl.prefix import build_prefix_cache
    from fasb_tl.scoring import ScoringConfig, score_choices

    questions = ["Does cracking your knuckles cause arthritis?", "What is the capital of Australia?"]
    prefix = build_prefix_cache(smollm2, generation_prefix())
    prompts = [generation_prompt(q) for q in questions]
    config = GenerationConfig(method="fasb", alpha=10.0, threshold=0.5, back_steps=4, max_new_tokens=10)
    plain = generate(smollm2, prompts, smollm2_steerer, config, progress=False)
    cached = generate(smollm2, prompts, smollm2_steerer, config, prefix=prefix, progress=False)
    assert [r.token_ids for r in plain] == [r.token_ids for r in cached]
    contexts = [p + "\nA:" for p in prompts]
    options = [[" No, it does not.", " Yes, it does."], [" Canberra.", " Sydney."]]
    scoring = ScoringConfig(method="fasb", alpha=10.0, threshold=0.5, back_steps=1)
    a = score_choices(smollm2, contexts, options, smollm2_steerer, scoring, progress=False)
    b = score_choices(smollm2, contexts, options, smollm2_steerer, scoring, prefix=prefix, progress=False)
    for x, y in zip(a, b):
        assert torch.allclose(x.scores, y.scores, atol=1e-4) and x.triggered == y.triggered
