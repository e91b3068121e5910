import json
from collections import Counter
from functools import cache

import pytest

from fasb_tl.data.records import DatasetError
from fasb_tl.evaluation.multichoice_data import (
    ALTERNATIVE_TASKS,
    SPLITS,
    TASK_FOLDERS,
    TASKS,
    ChoiceRecord,
    load_task,
    sample,
)
from fasb_tl.evaluation.multichoice_loaders import parse_winogrande_instruction

ALL_TASKS = TASKS + ALTERNATIVE_TASKS

# Counts of the shipped files. SST-2 pool is 6,920 - 3 and MMLU pool 285 - 5: those train/dev prompts
# reappear verbatim in the eval split and are dropped from the pool to keep the splits disjoint.
EXPECTED_COUNTS = {
    ("copa", "pool"): 500,
    ("copa", "eval"): 500,
    ("storycloze", "pool"): 360,
    ("storycloze", "eval"): 1511,
    ("nli", "pool"): 9842,
    ("nli", "eval"): 9824,
    ("mmlu", "pool"): 280,
    ("mmlu", "eval"): 14042,
    ("sst2", "pool"): 6917,
    ("sst2", "eval"): 1821,
    ("winogrande", "pool"): 267,
    ("winogrande", "eval"): 1000,
    ("xnli_en", "pool"): 1245,
    ("xnli_en", "eval"): 1245,
}


@pytest.fixture(scope="module")
def load(data_dir):
    """Loads each (task, split) once per module; the files are read-only so caching is safe."""

    @cache
    def _load(task: str, split: str) -> list[ChoiceRecord]:
        return load_task(task, split, data_dir)

    return _load


def by_id(records: list[ChoiceRecord], record_id: str) -> ChoiceRecord:
    matches = [r for r in records if r.id == record_id]
    assert len(matches) == 1, record_id
    return matches[0]


@pytest.mark.parametrize(("task", "split"), sorted(EXPECTED_COUNTS))
def test_row_counts_ids_and_gold_ranges(load, task, split):
    records = load(task, split)
    assert len(records) == EXPECTED_COUNTS[task, split]
    assert len({r.id for r in records}) == len(records)
    for record in records:
        assert record.task == task
        assert record.context.endswith("Answer:")
        assert 0 <= record.gold < len(record.options)
        assert all(option.startswith(" ") for option in record.options)


@pytest.mark.parametrize("task", ALL_TASKS)
def test_pool_and_eval_are_disjoint(load, task):
    pool = {r.context for r in load(task, "pool")}
    assert not pool & {r.context for r in load(task, "eval")}


@pytest.mark.parametrize(("task", "split"), sorted(EXPECTED_COUNTS))
def test_every_gold_index_occurs_and_none_dominates(load, task, split):
    records = load(task, split)
    counts = Counter(r.gold for r in records)
    n_options = len(records[0].options)
    assert set(counts) == set(range(n_options))
    assert max(counts.values()) / len(records) < 0.6


def test_pool_drops_exactly_the_prompts_shared_with_eval(load, data_dir):
    sst_train = (data_dir / "sst2" / "stsa.binary.train").read_text(encoding="utf-8").splitlines()
    pool_ids = {r.id for r in load("sst2", "pool")}
    dropped = [line for i, line in enumerate(sst_train) if f"sst2-pool-{i:05d}" not in pool_ids]
    assert dropped == ["0 no. .", "1 what 's next ?", "1 what 's next ?"]
    mmlu_pool_ids = {r.id for r in load("mmlu", "pool")}
    assert "mmlu-pool-clinical_knowledge-000" not in mmlu_pool_ids
    assert "mmlu-pool-abstract_algebra-000" in mmlu_pool_ids


def test_copa_first_rows(load):
    first = load("copa", "pool")[0]
    assert first == ChoiceRecord(
        id="copa-dev-1",
        task="copa",
        context=(
            "Question:\nMy body cast a shadow over the grass. Based on the previous passage, choose the most "
            "reasonable cause.\nA:The sun was rising.\nB:The grass was cut.\n\nAnswer:"
        ),
        options=(" A", " B"),
        gold=0,
    )
    second = load("copa", "eval")[1]
    assert second.id == "copa-test-502"
    assert (
        "choose the most reasonable effect.\nA:I retrieved a ticket stub.\nB:I found a weapon."
        in second.context
    )


def test_storycloze_first_rows(load):
    first = load("storycloze", "pool")[0]
    assert first.id == "storycloze-138d5bfb-05cc-41e3-bf2c-fa85ebad14e2"
    assert first.context == (
        "Rick grew up in a troubled household. He never found good support in family, and turned to gangs. "
        "It wasn't long before Rick got shot in a robbery. The incident caused him to turn a new leaf.\n"
        "Question: What is a possible continuation for the story given the following options?\n"
        "A: He is happy now. B: He joined a gang.\nAnswer:"
    )
    assert first.gold == 0
    eval_first = load("storycloze", "eval")[0]
    assert eval_first.context.startswith("I became a Law and Order fan in 2011.")
    assert eval_first.gold == 1  # AnswerRightEnding 2


def test_nli_first_rows_map_snli_labels(load):
    pool = load("nli", "pool")
    assert pool[0].options == (" True", " False", " unclusive")
    assert pool[0].context == (
        "Answer whether the hypothesis is more likely to be true, false, or unclusive based on the given "
        "premise.\nPremise: Two women are embracing while holding to go packages.\nHypothesis: The sisters "
        "are hugging goodbye while holding to go packages after just eating lunch.\nAnswer:"
    )
    assert pool[0].gold == 2  # label 1 = neutral
    assert "Hypothesis: Two woman are holding packages.\n" in pool[1].context
    assert pool[1].gold == 0  # label 0 = entailment
    # validation.tsv line 114 is CSV-quoted and labelled 2 (contradiction).
    assert 'Hypothesis: The man is reading a spoon with the words "HELP ME" on it.\n' in pool[112].context
    assert pool[112].gold == 1
    eval_first = load("nli", "eval")[0]
    assert "Hypothesis: The church has cracks in the ceiling.\n" in eval_first.context
    assert eval_first.gold == 2


def test_xnli_en_halves(load):
    pool, evaluation = load("xnli_en", "pool"), load("xnli_en", "eval")
    assert [r.gold for r in pool[:3]] == [2, 1, 0]  # neutral, contradiction, entailment
    assert "Premise: And he said, Mama, I'm home.\nHypothesis: He didn't say a word.\n" in pool[1].context
    assert evaluation[0].id == "xnli_en-eval-01245"

    def premise(record: ChoiceRecord) -> str:
        return record.context.split("Premise: ", 1)[1].split("\nHypothesis: ", 1)[0]

    assert not {premise(r) for r in pool} & {premise(r) for r in evaluation}


def test_mmlu_first_rows_and_literal_none(load):
    first = load("mmlu", "eval")[0]
    assert first.id == "mmlu-eval-abstract_algebra-000"
    assert first.options == (" A", " B", " C", " D")
    assert first.context == (
        "Question: Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
        "Which of the following answers is correct?\nA. 0\nB. 4\nC. 2\nD. 6\n"
        "State the letter corresponding to the correct answer.\nAnswer:"
    )
    assert first.gold == 1
    pool_first = load("mmlu", "pool")[0]
    assert pool_first.context.startswith(
        "Question: Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\n"
    )
    assert pool_first.gold == 1
    # "None" is an answer text in some subjects and must not turn into NaN or an empty string.
    assert sum("\nA. None\n" in r.context for r in load("mmlu", "eval")) >= 5
    subjects = {r.id.split("-")[2] for r in load("mmlu", "eval")}
    assert len(subjects) == 57


def test_sst2_first_rows(load):
    first = load("sst2", "pool")[0]
    assert first.options == (" Positive", " Negative")
    assert first.context == (
        "Consider the sentiment expression in this sentence and respond briefly with 'positive' or "
        "'negative'.\n\na stirring , funny and finally transporting re-imagining of beauty and the beast and "
        "1930s horror films\n\nAnswer:"
    )
    assert first.gold == 0  # label 1 = positive
    eval_first = load("sst2", "eval")[0]
    assert "\n\nno movement , no yuks , not much of anything .\n\n" in eval_first.context
    assert eval_first.gold == 1


def test_winogrande_first_rows(load):
    first = load("winogrande", "pool")[0]
    assert first.id == "winogrande-pool-00000"
    assert first.context == (
        "Please fill in the blanks. Write A or B as the answer.\n\nSentence: Sarah was a much better surgeon "
        "than Maria so _ always got the easier cases.\nA. Sarah\nB. Maria\nAnswer:"
    )
    assert first.gold == 1  # option2
    eval_first = load("winogrande", "eval")[0]
    assert eval_first.id == "winogrande-eval-00267"
    assert "the lack of people at the _ would make it easier to concentrate.\nA. library\nB. house\n" in (
        eval_first.context
    )
    assert eval_first.gold == 1


def test_winogrande_cut_does_not_split_a_twin_pair(load):
    last_pool = load("winogrande", "pool")[-1].context
    first_eval = load("winogrande", "eval")[0].context
    assert last_pool.split("Sentence: ")[1][:30] != first_eval.split("Sentence: ")[1][:30]


def test_parse_winogrande_instruction_rejects_other_layouts():
    text = (
        "Please choose the correct answer to fill in the blank to complete the given sentence: A _ b."
        "\n\nOption1: x Option2: y Answer format: option1/option2"
    )
    assert parse_winogrande_instruction(text) == ("A _ b.", "x", "y")
    with pytest.raises(DatasetError, match="cannot parse"):
        parse_winogrande_instruction("Fill in: A _ b. Option1: x Option2: y")


EXPECTED_MISSING = {
    "copa": "dev.jsonl",
    "storycloze": "cloze_test_val__spring2016 - cloze_test_ALL_val.csv",
    "nli": "validation.tsv",
    "mmlu": "_dev.csv",
    "sst2": "stsa.binary.train",
    "winogrande": "test.json",
    "xnli_en": "dev-en.tsv",
}


@pytest.mark.parametrize("task", ALL_TASKS)
def test_missing_folder_or_file_raises_dataset_error_naming_it(tmp_path, task):
    with pytest.raises(DatasetError) as info:
        load_task(task, "pool", data_dir=tmp_path)
    assert f"has no {TASK_FOLDERS[task]}/ subfolder" in str(info.value) and str(tmp_path) in str(info.value)
    (tmp_path / TASK_FOLDERS[task]).mkdir()
    with pytest.raises(DatasetError) as info:
        load_task(task, "pool", data_dir=tmp_path)
    assert EXPECTED_MISSING[task] in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_unknown_task_or_split(tmp_path):
    with pytest.raises(DatasetError, match="unknown task"):
        load_task("piqa", "eval", data_dir=tmp_path)
    with pytest.raises(DatasetError, match="unknown split"):
        load_task("copa", "train", data_dir=tmp_path)


def write_snli(tmp_path, header: str, rows: list[str]) -> None:
    folder = tmp_path / "nli" / "snli"
    folder.mkdir(parents=True)
    for name in ("validation.tsv", "test.tsv"):
        (folder / name).write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


def test_snli_bad_header_raises(tmp_path):
    write_snli(tmp_path, "sentence1\tsentence2\tgold", ["a\tb\t0"])
    with pytest.raises(DatasetError, match="test.tsv: header"):
        load_task("nli", "eval", data_dir=tmp_path)


def test_snli_skips_unlabelled_rows_with_a_warning(tmp_path):
    write_snli(tmp_path, "premise\thypothesis\tlabel", ["p\th1\t0", "p\th2\t-1", "p\th3\t2"])
    with pytest.warns(UserWarning, match="skipped 1 row"):
        records = load_task("nli", "eval", data_dir=tmp_path)
    assert [r.gold for r in records] == [0, 1]


def test_malformed_rows_name_the_file(tmp_path):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "stsa.binary.test").write_text("1 fine\npositive oops\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"stsa\.binary\.test:2"):
        load_task("sst2", "eval", data_dir=tmp_path)
    (tmp_path / "winogrande").mkdir()
    items = [{"instruction": "no markers here", "answer": "option1"}] * 1001
    (tmp_path / "winogrande" / "test.json").write_text(json.dumps(items), encoding="utf-8")
    with pytest.raises(DatasetError, match=r"test\.json: item 1: cannot parse"):
        load_task("winogrande", "eval", data_dir=tmp_path)


def test_choice_record_validation():
    with pytest.raises(DatasetError, match="gold"):
        ChoiceRecord("x", "t", "ctx Answer:", (" A", " B"), 2)
    with pytest.raises(DatasetError, match="at least 2"):
        ChoiceRecord("x", "t", "ctx Answer:", (" A",), 0)
    with pytest.raises(DatasetError, match="empty context"):
        ChoiceRecord("x", "t", "  ", (" A", " B"), 0)


def test_sample_is_seeded_ordered_and_complete_for_none(load):
    records = load("copa", "eval")
    first = sample(records, 50, seed=3)
    assert first == sample(records, 50, seed=3)
    assert first != sample(records, 50, seed=4)
    assert len(first) == 50 and len({r.id for r in first}) == 50
    positions = [records.index(r) for r in first]
    assert positions == sorted(positions)
    assert sample(records, None, seed=0) == records
    assert sample(records, len(records) + 5, seed=0) == records
    assert sample(records, 0, seed=0) == []
    with pytest.raises(ValueError):
        sample(records, -1, seed=0)


def test_splits_constant():
    assert SPLITS == ("pool", "eval")
    assert "xnli_en" not in TASKS
