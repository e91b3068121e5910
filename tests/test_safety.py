import re
from pathlib import Path

import pytest
import torch

from fasb_tl.activations import collect_head_activations
from fasb_tl.data import DatasetError, QARecord, probe_bank
from fasb_tl.data.records import check_unique_questions
from fasb_tl.models import encode

SOURCE = Path(__file__).resolve().parents[1] / "src" / "fasb_tl"


def test_no_unsafe_deserialisation_in_the_library():
    for path in SOURCE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "pickle.load" not in text, path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)


def no_hooks_left(model) -> bool:
    return all(not point._forward_hooks for point in model.hook_dict.values())


def test_interrupted_extraction_leaves_no_hooks(tiny_model, monkeypatch):
    ids = torch.tensor([encode(tiny_model, "Q: x A: y")])
    before = tiny_model(ids)
    original = tiny_model.forward

    def interrupted(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_model, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        collect_head_activations(tiny_model, ["Q: a A: b", "Q: c A: d"], progress=False)
    monkeypatch.undo()
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
