import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from fasb_tl.data import (
    DatasetError,
    QARecord,
    generation_prompt,
    load_builtin,
    load_truthfulqa,
    probe_bank,
    question_splits,
    tuning_bank,
)


@pytest.fixture(scope="module")
def truthfulqa(data_dir):
    return load_truthfulqa(data_dir)


def test_truthfulqa_aligns_csv_and_mc_json(truthfulqa, data_dir):
    items = json.loads((data_dir / "truthfulqa" / "mc_task.json").read_text())
    assert len(truthfulqa) == 817
    assert [r.question for r in truthfulqa] == [item["question"] for item in items]
    assert sum(len(r.true_answers) for r in truthfulqa) == 2835
    assert sum(len(r.true_answers) + len(r.false_answers) for r in truthfulqa) == 6204
    assert sum(len(r.extra["mc1_choices"]) for r in truthfulqa) == 4186
    for record, item in zip(truthfulqa, items):
        assert set(record.true_answers) == {a for a, label in item["mc2_targets"].items() if label == 1}
        assert record.extra["correct_answers"] and record.extra["incorrect_answers"]
        assert record.extra["best_answer"].endswith(".")


def test_truthfulqa_matches_the_question_with_a_trailing_space(truthfulqa):
    tarot = [r for r in truthfulqa if r.question.startswith("What happens if you turn over a tarot card")]
    assert len(tarot) == 1 and tarot[0].extra["correct_answers"]


def copy_truthfulqa(data_dir, tmp_path):
    folder = tmp_path / "truthfulqa"
    shutil.copytree(data_dir / "truthfulqa", folder)
    return folder


def test_truthfulqa_unmatched_question_fails_loudly(data_dir, tmp_path):
    folder = copy_truthfulqa(data_dir, tmp_path)
    csv = folder / "TruthfulQA.csv"
    csv.chmod(0o644)
    text = csv.read_text(encoding="utf-8-sig")
    csv.write_text(text.replace("What happens if you eat a pomegranate?", "Something else entirely?"))
    with pytest.raises(DatasetError, match="1 mc_task.json question"):
        load_truthfulqa(tmp_path)


def test_truthfulqa_missing_file_and_column(data_dir, tmp_path):
    folder = copy_truthfulqa(data_dir, tmp_path)
    (folder / "mc_task.json").chmod(0o644)
    (folder / "mc_task.json").unlink()
    with pytest.raises(DatasetError, match="missing data file .*mc_task.json"):
        load_truthfulqa(tmp_path)
    shutil.copy(data_dir / "truthfulqa" / "mc_task.json", folder / "mc_task.json")
    csv = folder / "TruthfulQA.csv"
    csv.chmod(0o644)
    csv.write_text(csv.read_text(encoding="utf-8-sig").replace("Best Answer", "Best", 1))
    with pytest.raises(DatasetError, match="lacks column.*Best Answer"):
        load_truthfulqa(tmp_path)


def test_missing_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match=r"data_dir=.*nowhere.*is not a folder"):
        load_truthfulqa(tmp_path / "nowhere")


def test_builtin_dataset_is_valid():
    records = load_builtin()
    assert len(records) >= 150
    categories = Counter(r.category for r in records)
    assert len(categories) >= 10
    questions = [r.question.lower().strip() for r in records]
    assert len(set(questions)) == len(questions)
    assert len({r.id for r in records}) == len(records)
    for r in records:
        assert r.true_answers and r.false_answers
        assert r.best_answer in r.true_answers
        assert not set(r.true_answers) & set(r.false_answers)


def test_splits_are_disjoint_cover_everything_and_reproducible():
    for shuffle in (False, True):
        splits = question_splits(188, n_folds=2, val_fraction=0.2, seed=7, shuffle=shuffle)
        again = question_splits(188, n_folds=2, val_fraction=0.2, seed=7, shuffle=shuffle)
        other = question_splits(188, n_folds=2, val_fraction=0.2, seed=8, shuffle=shuffle)
        for split, same, different in zip(splits, again, other):
            assert not set(split.train) & set(split.val)
            assert not set(split.train) & set(split.test) and not set(split.val) & set(split.test)
            assert sorted([*split.train, *split.val, *split.test]) == list(range(188))
            assert np.array_equal(split.train, same.train) and np.array_equal(split.test, same.test)
            assert not np.array_equal(split.train, different.train)
        assert sorted(np.concatenate([s.test for s in splits]).tolist()) == list(range(188))


def test_truthfulqa_splits_match_the_reference_sizes():
    splits = question_splits(817)
    assert [(len(s.train), len(s.val), len(s.test)) for s in splits] == [(326, 82, 409), (327, 82, 408)]
    assert splits[0].test.tolist() == list(range(409))


def test_split_rejects_bad_values():
    with pytest.raises(DatasetError, match="val_fraction"):
        question_splits(100, val_fraction=1.5)
    with pytest.raises(DatasetError, match="n_folds"):
        question_splits(100, n_folds=1)


def test_probe_bank_keeps_answers_with_their_question():
    records = load_builtin()[:5]
    bank = probe_bank(records)
    assert len(bank.prompts) == len(bank.labels) == len(bank.groups) == sum(len(r.answers) for r in records)
    assert bank.prompts[0] == f"Q: {records[0].question} A: {records[0].true_answers[0]}"
    for prompt, owner in zip(bank.prompts, bank.groups.tolist()):
        assert prompt.startswith(f"Q: {records[owner].question} A: ")
    assert set(bank.labels.tolist()) == {0, 1}
    assert bank.labels.dtype == bank.groups.dtype == torch.int64


def test_probe_bank_refuses_a_question_with_one_label():
    record = QARecord(id="x", question="Is it?", true_answers=("Yes.",), false_answers=())
    with pytest.raises(DatasetError, match="no false answer"):
        probe_bank([record])
    with pytest.raises(DatasetError, match="no records"):
        probe_bank([])


def test_tuning_bank_is_seeded_and_never_pairs_a_question_with_itself():
    records = load_builtin()[:20]
    bank = tuning_bank(records, seed=3)
    assert bank == tuning_bank(records, seed=3)
    assert bank != tuning_bank(records, seed=4)
    position = 0
    for record in records:
        for answer, _ in record.answers:
            prompt = bank[position]
            head = f"Q: {record.question} A: {answer} Q: "
            assert prompt.startswith(head) and prompt[len(head) :] != record.question
            position += 1


def test_generation_prompt_has_instruction_primer_and_question():
    prompt = generation_prompt("Why is the sky blue?")
    assert prompt.startswith("Interpret each question literally")
    assert (
        "Q: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain." in prompt
    )
    assert prompt.endswith("\n\nQ: Why is the sky blue?")
