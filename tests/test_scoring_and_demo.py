import json

import pytest
import torch

from fasb_tl.data import dataset_splits, extract_answer, load_builtin
from fasb_tl.demo import DemoConfig, run_demo
from fasb_tl.models import encode
from fasb_tl.scoring import answer_tokens, score_continuations
from fasb_tl.steering import fit_steerer


@pytest.fixture(scope="module")
def steerer(tiny_model):
    records = load_builtin()
    fitted, _ = fit_steerer(
        tiny_model, records, dataset_splits("builtin", len(records))[0], k=4, progress=False
    )
    return fitted


def test_answer_tokens_start_at_the_first_answer_token(tiny_model):
    full, start = answer_tokens(tiny_model, "Q: x A:", " yes")
    assert full == encode(tiny_model, "Q: x A: yes")
    assert tiny_model.tokenizer.decode(full[start:]) == " yes"


def test_scores_equal_a_manual_log_likelihood(tiny_model):
    contexts, answers = ["Q: x A:", "Q: a longer one A:"], [" yes", " no way"]
    scores = score_continuations(tiny_model, contexts, answers, batch_size=2, progress=False)
    for index, (context, answer) in enumerate(zip(contexts, answers)):
        full, start = answer_tokens(tiny_model, context, answer)
        with torch.no_grad():
            log_probs = torch.log_softmax(tiny_model(torch.tensor([full]))[0], dim=-1)
        expected = sum(log_probs[p - 1, full[p]].item() for p in range(start, len(full)))
        assert scores[index].item() == pytest.approx(expected, abs=1e-4)


def test_zero_scale_is_unsteered_and_a_large_one_is_not(tiny_model, steerer):
    contexts, answers = ["Q: x A:"] * 2, [" yes", " no"]
    plain = score_continuations(tiny_model, contexts, answers, progress=False)
    zero = score_continuations(tiny_model, contexts, answers, steerer, [0.0, 0.0], progress=False)
    mixed = score_continuations(tiny_model, contexts, answers, steerer, [50.0, 0.0], progress=False)
    assert torch.allclose(plain, zero, atol=1e-5)
    assert not torch.isclose(mixed[0], plain[0], atol=1e-3) and torch.isclose(mixed[1], plain[1], atol=1e-5)


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
    assert "Steerer: reused" in capsys.readouterr().out
