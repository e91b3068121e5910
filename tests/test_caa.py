import pytest
import torch

from fasb_tl.caa import ResidualSteerer, fit_caa
from fasb_tl.generation import GenerationConfig, GenerationConfigError, generate
from fasb_tl.models import encode
from fasb_tl.scoring import ScoringConfig, ScoringConfigError, score_choices
from fasb_tl.steering import ModelMismatchError

PROMPTS = [
    "Q: Is fire hot? A: Yes.",
    "Q: Is ice hot? A: Yes.",
    "Q: Is fire cold? A: No.",
    "Q: Is ice cold? A: No.",
]
LABELS = torch.tensor([1, 0, 0, 1])


@pytest.fixture(scope="module")
def caa(tiny_model):
    return fit_caa(tiny_model, PROMPTS, LABELS, layer=1, progress=False)


def test_caa_vector_is_the_mean_difference_of_the_residual_stream(tiny_model, caa):
    last = []
    for prompt in PROMPTS:
        _, cache = tiny_model.run_with_cache(
            torch.tensor([encode(tiny_model, prompt)]), names_filter="blocks.1.hook_resid_post"
        )
        last.append(cache["blocks.1.hook_resid_post"][0, -1])
    last = torch.stack(last)
    expected = last[LABELS == 1].mean(0) - last[LABELS == 0].mean(0)
    assert torch.allclose(caa.vector, expected, atol=1e-5)
    assert fit_caa(tiny_model, PROMPTS, LABELS, progress=False).layer == tiny_model.cfg.n_layers // 2


def test_caa_steers_generation_and_scoring_and_cleans_up(tiny_model, caa):
    ids = torch.tensor([encode(tiny_model, "Q: x A:")])
    before = tiny_model(ids)
    plain = generate(
        tiny_model, PROMPTS, None, GenerationConfig(method="none", max_new_tokens=8), progress=False
    )
    zero = generate(
        tiny_model, PROMPTS, caa, GenerationConfig(method="iti", alpha=0.0, max_new_tokens=8), progress=False
    )
    strong = generate(
        tiny_model, PROMPTS, caa, GenerationConfig(method="iti", alpha=20.0, max_new_tokens=8), progress=False
    )
    assert [r.token_ids for r in zero] == [r.token_ids for r in plain]
    assert any(a.token_ids != b.token_ids for a, b in zip(plain, strong))
    scored = score_choices(
        tiny_model,
        ["Q: x A:"],
        [[" yes", " no"]],
        caa,
        ScoringConfig(method="iti", alpha=20.0),
        progress=False,
    )[0]
    assert not torch.allclose(scored.scores, scored.unsteered)
    assert torch.equal(tiny_model(ids), before)


def test_caa_refuses_a_model_of_another_shape(smollm2, caa):
    with pytest.raises(ModelMismatchError, match=r"\(2, 64\).*\(30, 576\)"):
        caa.check_model(smollm2)
    with pytest.raises(ValueError, match="both labels"):
        fit_caa(smollm2, PROMPTS[:1], torch.tensor([1]), progress=False)
    assert isinstance(caa, ResidualSteerer)


def test_a_gated_method_with_the_caa_vector_is_refused_before_any_forward(tiny_model, caa):
    with pytest.raises(
        GenerationConfigError, match="method 'fasb' reads probes, which a ResidualSteerer has not"
    ):
        generate(tiny_model, PROMPTS, caa, GenerationConfig(method="fasb"), progress=False)
    with pytest.raises(ScoringConfigError, match="method 'question' reads probes"):
        score_choices(
            tiny_model, ["Q: x A:"], [[" y", " z"]], caa, ScoringConfig(method="question"), progress=False
        )
