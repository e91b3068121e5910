import re
from pathlib import Path

import pytest
import torch

from fasb_tl.activations import collect_head_activations
from fasb_tl.data import DatasetError, QARecord, probe_bank
from fasb_tl.data.records import check_unique_questions
from fasb_tl.generation import GenerationConfig, generate
from fasb_tl.models import encode
from fasb_tl.scoring import ScoringConfig, score_choices

SOURCE = Path(__file__).resolve().parents[1] / "src" / "fasb_tl"


def test_no_unsafe_deserialisation_in_the_library():
    for path in SOURCE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "pickle.load" not in text, path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)


def no_hooks_left(model) -> bool:
    return all(not point._forward_hooks for point in model.hook_dict.values())


STAGES = {
    "extraction": lambda model, steerer: collect_head_activations(
        model, ["Q: a A: b", "Q: c A: d", "Q: e A: f"], batch_size=1, progress=False
    ),
    "generation": lambda model, steerer: generate(
        model,
        ["Q: a A:", "Q: b A:"],
        steerer,
        GenerationConfig(threshold=1.0, max_new_tokens=6),
        batch_size=1,
        progress=False,
    ),
    "scoring": lambda model, steerer: score_choices(
        model,
        ["Q: a A:", "Q: b A:"],
        [[" x", " y"], [" z", " w"]],
        steerer,
        ScoringConfig(threshold=1.0, back_steps=2),
        batch_size=1,
        progress=False,
    ),
}


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, RuntimeError])
@pytest.mark.parametrize("stage", list(STAGES))
def test_an_interrupted_stage_leaves_no_hooks_and_an_unsteered_model(
    stage, interrupt, tiny_model, steerer, monkeypatch
):
    ids = torch.tensor([encode(tiny_model, "Q: x A: y")])
    before = tiny_model(ids)
    original = tiny_model.forward
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # inside the stage, after its hooks are attached and have run once
            raise interrupt("stop")
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_model, "forward", interrupted)
    with pytest.raises(interrupt):
        STAGES[stage](tiny_model, steerer)
    monkeypatch.undo()
    assert len(calls) == 2
    assert no_hooks_left(tiny_model)
    assert torch.equal(tiny_model(ids), before)


def test_duplicate_questions_are_refused():
    records = [
        QARecord(id="a", question="Is it?", true_answers=("Yes.",), false_answers=("No.",)),
        QARecord(id="b", question="  is   IT? ", true_answers=("Yes.",), false_answers=("No.",)),
    ]
    with pytest.raises(DatasetError, match="appears twice"):
        check_unique_questions(records, "test")


def test_a_question_with_only_false_answers_is_refused():
    record = QARecord(id="x", question="Is it?", true_answers=(), false_answers=("No.",))
    with pytest.raises(DatasetError, match="no true answer"):
        probe_bank([record])
