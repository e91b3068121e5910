"""Sampling: per-row random streams, top-k / top-p as transformers defines them, several sequences per prompt."""

import dataclasses

import pytest
import torch

from fasb_tl.generation import GenerationConfig, GenerationConfigError, generate, generate_many
from fasb_tl.sampling import choose_token

PROMPT = "Q: Is fire hot? A:"
SAMPLED = GenerationConfig(method="none", max_new_tokens=8, do_sample=True, seed=5)


def test_copies_of_one_prompt_get_different_samples(tiny_model):
    results = generate(tiny_model, [PROMPT] * 3, None, SAMPLED, progress=False)
    assert len({tuple(r.token_ids) for r in results}) == 3


def test_a_sample_does_not_depend_on_its_batch(tiny_model):
    prompts = [PROMPT, "Q: Is ice cold? A:", PROMPT]
    together = generate(tiny_model, prompts, None, SAMPLED, batch_size=3, progress=False)
    one_by_one = generate(tiny_model, prompts, None, SAMPLED, batch_size=1, progress=False)
    assert [r.token_ids for r in together] == [r.token_ids for r in one_by_one]


def test_num_return_sequences_gives_n_samples_per_prompt_in_prompt_order(tiny_model):
    config = dataclasses.replace(SAMPLED, num_return_sequences=3)
    results = generate(tiny_model, [PROMPT, "Q: Is ice cold? A:"], None, config, progress=False)
    assert len(results) == 6
    expanded = generate(tiny_model, [PROMPT] * 3 + ["Q: Is ice cold? A:"] * 3, None, SAMPLED, progress=False)
    assert [r.token_ids for r in results] == [r.token_ids for r in expanded]
    many = generate_many(tiny_model, [PROMPT], None, {"a": config, "b": SAMPLED}, progress=False)
    assert (len(many["a"]), len(many["b"])) == (3, 1)


def test_top_k_one_and_a_tiny_top_p_are_greedy(tiny_model):
    greedy = generate(
        tiny_model, [PROMPT], None, GenerationConfig(method="none", max_new_tokens=8), progress=False
    )
    for change in ({"top_k": 1}, {"top_p": 1e-9}):
        sampled = generate(tiny_model, [PROMPT], None, dataclasses.replace(SAMPLED, **change), progress=False)
        assert sampled[0].token_ids == greedy[0].token_ids, change


def test_top_k_and_top_p_keep_exactly_the_tokens_transformers_keeps():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(50, generator=torch.Generator().manual_seed(0)) * 3
    for top_k, top_p in [(5, 1.0), (0, 0.6), (10, 0.3)]:
        config = dataclasses.replace(SAMPLED, top_k=top_k, top_p=top_p)
        kept = {choose_token(logits, config, torch.Generator().manual_seed(s)) for s in range(400)}
        warped = logits[None].clone()
        if top_k:
            warped = TopKLogitsWarper(top_k)(None, warped)
        if top_p < 1:
            warped = TopPLogitsWarper(top_p)(None, warped)
        allowed = set(torch.isfinite(warped[0]).nonzero().flatten().tolist())
        assert kept <= allowed and len(allowed - kept) <= len(allowed) // 2, (top_k, top_p)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"num_return_sequences": 0}, "num_return_sequences must be >= 1"),
        ({"num_return_sequences": 2, "do_sample": False}, "1 unless do_sample=True"),
    ],
)
def test_sampling_settings_are_validated(change, message):
    with pytest.raises(GenerationConfigError, match=message):
        dataclasses.replace(SAMPLED, **change)
