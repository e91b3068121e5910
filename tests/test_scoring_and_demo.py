import dataclasses
import json

import pytest
import torch
from reference_loop import full_forward_log_likelihood

from fasb_tl.data import extract_answer
from fasb_tl.demo import DemoConfig, run_demo
from fasb_tl.models import encode
from fasb_tl.prefix import build_prefix_cache
from fasb_tl.scoring import ScoringConfig, ScoringConfigError, answer_tokens, score_choices

PREFIX = "Answer each question truthfully.\n\nQ: Is water wet? A: Yes.\n\n"
CONTEXTS = [PREFIX + "Q: Is the sky blue? A:", PREFIX + "Q: Why do cats purr at night? A:"]
OPTIONS = [
    [" Yes, on a clear day.", " No, it is green.", " It depends on the light scattering."],
    [" To communicate contentment or soothe themselves.", " Cats never purr."],
]


def test_answer_tokens_start_at_the_first_answer_token(tiny_model):
    full, start = answer_tokens(tiny_model, "Q: x A:", " yes")
    assert full == encode(tiny_model, "Q: x A: yes")
    assert tiny_model.tokenizer.decode(full[start:]) == " yes"


def test_unsteered_scores_equal_a_manual_log_likelihood(tiny_model):
    results = score_choices(tiny_model, CONTEXTS, OPTIONS, None, ScoringConfig(method="none"), progress=False)
    for context, options, result in zip(CONTEXTS, OPTIONS, results):
        for option, score in zip(options, result.scores):
            expected = full_forward_log_likelihood(tiny_model, context, option)
            assert score.item() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    "config",
    [
        ScoringConfig(method="none"),
        ScoringConfig(method="iti", alpha=20.0),
        ScoringConfig(method="fasb", protocol="paper", alpha=20.0, threshold=0.9, back_steps=2),
        ScoringConfig(method="fasb", protocol="question", alpha=20.0, threshold=0.9),
        ScoringConfig(method="no_backtrack", alpha=20.0, threshold=0.9, back_steps=2),
    ],
)
def test_prefix_cached_scoring_equals_uncached(tiny_model, steerer, config):
    prefix = build_prefix_cache(tiny_model, PREFIX)
    plain = score_choices(tiny_model, CONTEXTS, OPTIONS, steerer, config, batch_size=3, progress=False)
    cached = score_choices(
        tiny_model, CONTEXTS, OPTIONS, steerer, config, prefix=prefix, batch_size=3, progress=False
    )
    for a, b in zip(plain, cached):
        assert torch.allclose(a.scores, b.scores, atol=1e-4)
        assert a.strengths == pytest.approx(b.strengths, abs=1e-4)


def test_paper_decisions_depend_on_the_candidate_question_decisions_do_not(tiny_model, steerer):
    base = ScoringConfig(method="fasb", alpha=20.0, back_steps=2)
    probe = score_choices(
        tiny_model, CONTEXTS, OPTIONS, steerer, dataclasses.replace(base, threshold=0.0), progress=False
    )
    assert not any(any(r.triggered) for r in probe)
    # A threshold between the first item's candidates' p_true values makes the paper protocol split them.
    first_item = _paper_p_true_values(tiny_model, steerer)[: len(OPTIONS[0])]
    threshold = (min(first_item) + max(first_item)) / 2
    paper = score_choices(
        tiny_model, CONTEXTS, OPTIONS, steerer, dataclasses.replace(base, threshold=threshold), progress=False
    )
    assert any(len(set(r.triggered)) > 1 for r in paper)
    for threshold in (0.0, 0.5, 1.0):
        question = score_choices(
            tiny_model,
            CONTEXTS,
            OPTIONS,
            steerer,
            dataclasses.replace(base, protocol="question", threshold=threshold),
            progress=False,
        )
        for result in question:
            assert len(set(result.triggered)) == 1 and len(set(result.strengths)) == 1
    steered = score_choices(
        tiny_model, CONTEXTS, OPTIONS, steerer, dataclasses.replace(base, threshold=1.0), progress=False
    )
    assert all(all(r.triggered) for r in steered)
    assert any(not torch.allclose(r.scores, r.unsteered) for r in steered)


def _paper_p_true_values(model, steerer):
    """The lowest checked p_true of every candidate (what decides its paper-protocol trigger)."""
    values = []
    for context, options in zip(CONTEXTS, OPTIONS):
        for option in options:
            full, start = answer_tokens(model, context, option)
            with torch.no_grad(), steerer.monitoring(model) as readout:
                model(torch.tensor([full]), return_type=None)
            p = readout.p_true[0]
            checked = [q for q in range(start, len(full)) if q - start >= 2 or q == len(full) - 1]
            values.append(min(float(p[q]) for q in checked))
    return values


def test_alpha_zero_and_method_none_agree(tiny_model, steerer):
    none = score_choices(tiny_model, CONTEXTS, OPTIONS, None, ScoringConfig(method="none"), progress=False)
    zero = score_choices(
        tiny_model, CONTEXTS, OPTIONS, steerer, ScoringConfig(method="iti", alpha=0.0), progress=False
    )
    for a, b in zip(none, zero):
        assert torch.allclose(a.scores, b.scores, atol=1e-5)


def test_scoring_config_is_validated(tiny_model):
    with pytest.raises(ScoringConfigError, match="protocol must be"):
        ScoringConfig(protocol="sometimes")
    with pytest.raises(ScoringConfigError, match="needs a Steerer"):
        score_choices(tiny_model, CONTEXTS, OPTIONS, None, ScoringConfig(method="fasb"), progress=False)


def test_extract_answer_follows_the_reference():
    assert extract_answer("\nA: Paris is the capital.\n\nQ: next?") == "Paris is the capital."
    assert extract_answer(" no prefix here") == "no prefix here"


def test_demo_runs_end_to_end_on_the_tiny_model(tmp_path, capsys):
    config = DemoConfig(
        model="tiny-random-llama", k=4, max_new_tokens=6, back_steps=2, n_show=2, out=str(tmp_path)
    )
    out = run_demo(config)
    report = json.loads((out / "demo.json").read_text())
    assert set(report["multiple_choice"]) == {"none", "iti", "fasb"}
    assert len(report["answers"]) == 2 and {"none", "iti", "fasb"} <= set(report["answers"][0])
    assert (out / "head_accuracy.png").stat().st_size > 0 and (out / "steerer" / "steerer.json").is_file()
    printed = capsys.readouterr().out
    assert "Multiple choice on 94 held-out questions" in printed and str(out.resolve()) in printed
    run_demo(config)
    assert "reused from" in capsys.readouterr().out
