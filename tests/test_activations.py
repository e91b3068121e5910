import pytest
import torch

from fasb_tl.activations import (
    collect_head_activations,
    collect_head_activations_at,
    collect_span_activations,
    tokenize_prompts,
)
from fasb_tl.models import ContextLengthError, encode

PROMPTS = ["Q: a A: b", "Q: a much longer prompt than the others A: yes", "x", "Q: medium length A: no"]


def one_by_one(model, prompts):
    return torch.cat([collect_head_activations(model, [p], progress=False) for p in prompts])


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_equals_one_by_one(tiny_model, side):
    expected = one_by_one(tiny_model, PROMPTS)
    batched = collect_head_activations(tiny_model, PROMPTS, batch_size=3, padding_side=side, progress=False)
    assert batched.shape == (4, 2, 4, 16) and batched.dtype == torch.float32
    assert torch.allclose(batched, expected, atol=1e-4)


def test_last_position_is_the_real_last_token(tiny_model):
    ids = torch.tensor([encode(tiny_model, PROMPTS[0])])
    _, cache = tiny_model.run_with_cache(ids, names_filter=lambda n: n.endswith("attn.hook_z"))
    direct = torch.stack([cache[f"blocks.{layer}.attn.hook_z"][0, -1] for layer in range(2)])
    # Batched with a much longer prompt, so the short one is padded on the left.
    batched = collect_head_activations(tiny_model, PROMPTS[:2], padding_side="left", progress=False)
    assert torch.allclose(batched[0], direct, atol=1e-4)


def test_explicit_positions_and_spans(tiny_model):
    ids = torch.tensor([encode(tiny_model, PROMPTS[1])])
    _, cache = tiny_model.run_with_cache(ids, names_filter="blocks.1.attn.hook_z")
    z = cache["blocks.1.attn.hook_z"][0]
    picked = collect_head_activations(tiny_model, PROMPTS[:2], positions=[0, 3], layers=[1], progress=False)
    assert picked.shape == (2, 1, 4, 16)
    assert torch.allclose(picked[1, 0], z[3], atol=1e-4)
    spans = collect_span_activations(
        tiny_model, PROMPTS, [(0, 2), (2, 9), (0, 1), (1, 4)], padding_side="left", progress=False
    )
    assert [s.shape[0] for s in spans] == [2, 7, 1, 3]
    assert torch.allclose(spans[1][:, 1], z[2:9], atol=1e-4)


def test_several_positions_per_prompt_equal_one_position_at_a_time(tiny_model):
    prompts = ["Q: Is the sky blue? A: Yes.", "Hi", "Q: Why? A: Because it is."]
    positions = [[-1, 3, 0], [1], [-2, -1]]
    pieces = collect_head_activations_at(tiny_model, prompts, positions, batch_size=2, progress=False)
    for prompt, picks, piece in zip(prompts, positions, pieces):
        assert piece.shape[0] == len(picks)
        for row, pick in zip(piece, picks):
            alone = collect_head_activations(tiny_model, [prompt], [pick], progress=False)[0]
            assert torch.allclose(row, alone, atol=1e-5)
    with pytest.raises(ValueError, match="empty position list"):
        collect_head_activations_at(tiny_model, prompts[:1], [[]], progress=False)


def test_bad_inputs_are_refused(tiny_model):
    with pytest.raises(ValueError, match="empty prompt list"):
        collect_head_activations(tiny_model, [], progress=False)
    with pytest.raises(ValueError, match="outside its"):
        collect_head_activations(tiny_model, ["ab"], positions=[5], progress=False)
    with pytest.raises(ContextLengthError, match="at most 1024"):
        tokenize_prompts(tiny_model, ["x" * 2000])
