"""One loader per multiple-choice task (COPA, StoryCloze, NLI, MMLU, SST-2, Winogrande; XNLI-en), each
reading its files into ChoiceRecord lists; :func:`~fasb_tl.evaluation.multichoice_data.load_task` picks one.

The prompt templates, answer words and label mappings come from SADI's ``load_dataset.py`` (Wang et al.,
"Semantics-Adaptive Activation Intervention", ICLR 2025; github.com/weixuan-wang123/SADI), as documented in
``data/README.md``. FASB's own multiple-choice protocol is not published; that it follows SADI is an
assumption. Two deliberate departures: every context ends with ``"Answer:"`` (COPA's trailing newline is
dropped) and every answer is scored as a continuation starting with a space; and where SADI's pool file
is not available here, a disjoint substitute is used (see each loader).
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fasb_tl.data.paths import require_file
from fasb_tl.data.records import DatasetError

AB_OPTIONS = (" A", " B")
ABCD_OPTIONS = (" A", " B", " C", " D")
NLI_OPTIONS = (" True", " False", " unclusive")  # "unclusive" is SADI's spelling, kept so scores compare
SST2_OPTIONS = (" Positive", " Negative")

COPA_TEMPLATE = (
    "Question:\n{premise} Based on the previous passage, choose the most reasonable {asks_for}.\n"
    "A:{choice1}\nB:{choice2}\n\nAnswer:"
)
STORYCLOZE_TEMPLATE = (
    "{story}\nQuestion: What is a possible continuation for the story given the following options?\n"
    "A: {quiz1} B: {quiz2}\nAnswer:"
)
NLI_TEMPLATE = (
    "Answer whether the hypothesis is more likely to be true, false, or unclusive based on the given premise.\n"
    "Premise: {premise}\nHypothesis: {hypothesis}\nAnswer:"
)
MMLU_TEMPLATE = (
    "Question: {question}\nWhich of the following answers is correct?\nA. {a}\nB. {b}\nC. {c}\nD. {d}\n"
    "State the letter corresponding to the correct answer.\nAnswer:"
)
SST2_TEMPLATE = (
    "Consider the sentiment expression in this sentence and respond briefly with 'positive' or "
    "'negative'.\n\n{text}\n\nAnswer:"
)
WINOGRANDE_TEMPLATE = (
    "Please fill in the blanks. Write A or B as the answer.\n\n"
    "Sentence: {sentence}\nA. {option1}\nB. {option2}\nAnswer:"
)

STORYCLOZE_FILE = "cloze_test_val__spring2016 - cloze_test_ALL_val.csv"
STORYCLOZE_POOL_SIZE = 360  # XStoryCloze's 20/80 split of the val set: first 360 stories train, rest eval
WINOGRANDE_EVAL_SIZE = 1000

STORYCLOZE_COLUMNS = (
    "InputStoryid",
    "InputSentence1",
    "InputSentence2",
    "InputSentence3",
    "InputSentence4",
    "RandomFifthSentenceQuiz1",
    "RandomFifthSentenceQuiz2",
    "AnswerRightEnding",
)
NLI_COLUMNS = ["premise", "hypothesis", "label"]
MMLU_COLUMNS = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
# SNLI's integer labels (0 entailment, 1 neutral, 2 contradiction) onto NLI_OPTIONS (True, False, unclusive).
SNLI_GOLD = {"0": 0, "2": 1, "1": 2}
XNLI_GOLD = {"entailment": 0, "contradiction": 1, "neutral": 2}
SST2_GOLD = {"1": 0, "0": 1}

# Markers of LLM-Adapters' instruction layout, from which Winogrande's original fields are recovered.
_WINO_SENTENCE = "complete the given sentence: "
_WINO_OPTION1 = "\n\nOption1: "
_WINO_OPTION2 = " Option2: "
_WINO_END = " Answer format:"


@dataclass(frozen=True)
class ChoiceRecord:
    """One multiple-choice item: a prompt (context), its answer options as scored continuations, the gold index."""

    id: str
    task: str
    context: str
    options: tuple[str, ...]
    gold: int

    def __post_init__(self) -> None:
        if not self.context.strip():
            raise DatasetError(f"record {self.id!r} has an empty context")
        if len(self.options) < 2:
            raise DatasetError(f"record {self.id!r} has {len(self.options)} option(s); at least 2 are needed")
        if not isinstance(self.gold, int) or not 0 <= self.gold < len(self.options):
            raise DatasetError(
                f"record {self.id!r}: gold {self.gold!r} is not an index into {len(self.options)} options"
            )


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    items = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
            if not isinstance(item, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(item).__name__}")
            items.append((lineno, item))
    return items


def _field(row: dict, key: str, where: str) -> str:
    if key not in row or row[key] is None:
        raise DatasetError(f"{where}: missing field {key!r}")
    return str(row[key])


def _read_table(path: Path, columns: list[str], delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """(index, fields) of each data row of a CSV or TSV file whose header must be ``columns`` and whose rows
    must each have one field per column."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if header != columns:
            raise DatasetError(f"{path}: header is {header}, expected {columns}")
        for index, row in enumerate(reader):
            if len(row) != len(columns):
                raise DatasetError(
                    f"{path}: data row {index + 1} has {len(row)} fields, expected {len(columns)}"
                )
            yield index, row


def _load_copa(folder: Path, split: str) -> list[ChoiceRecord]:
    """COPA: pool = the 500 dev items (SADI's xcopa/train.csv is not available), eval = the 500 test items."""
    path = require_file(folder, "dev.jsonl" if split == "pool" else "test.jsonl")
    records = []
    for lineno, item in _read_jsonl(path):
        where = f"{path}:{lineno}"
        asks_for = _field(item, "asks_for", where)
        answer = _field(item, "more_plausible_alternative", where)
        if asks_for not in ("cause", "effect"):
            raise DatasetError(f"{where}: asks_for is {asks_for!r}, expected 'cause' or 'effect'")
        if answer not in ("1", "2"):
            raise DatasetError(f"{where}: more_plausible_alternative is {answer!r}, expected '1' or '2'")
        context = COPA_TEMPLATE.format(
            premise=_field(item, "premise", where),
            asks_for=asks_for,
            choice1=_field(item, "alternative_1", where),
            choice2=_field(item, "alternative_2", where),
        )
        native = item.get("item_id")
        record_id = f"copa-{native}" if native else f"copa-{split}-{lineno - 1:05d}"
        records.append(ChoiceRecord(record_id, "copa", context, AB_OPTIONS, int(answer) - 1))
    return records


def _load_storycloze(folder: Path, split: str) -> list[ChoiceRecord]:
    """StoryCloze Spring-2016 val: pool = first 360 stories, eval = the other 1,511 (XStoryCloze's split)."""
    path = require_file(folder, STORYCLOZE_FILE)
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in STORYCLOZE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path} lacks column(s) {missing}; found {reader.fieldnames}")
        rows = list(reader)
    if len(rows) <= STORYCLOZE_POOL_SIZE:
        raise DatasetError(f"{path} has {len(rows)} stories; more than {STORYCLOZE_POOL_SIZE} are needed")
    start, stop = (0, STORYCLOZE_POOL_SIZE) if split == "pool" else (STORYCLOZE_POOL_SIZE, len(rows))
    records = []
    for index in range(start, stop):
        row = rows[index]
        where = f"{path}: data row {index + 1}"
        if any(row.get(c) is None for c in STORYCLOZE_COLUMNS):
            raise DatasetError(f"{where}: too few fields")
        answer = row["AnswerRightEnding"].strip()
        if answer not in ("1", "2"):
            raise DatasetError(f"{where}: AnswerRightEnding is {answer!r}, expected '1' or '2'")
        context = STORYCLOZE_TEMPLATE.format(
            story=" ".join(row[f"InputSentence{k}"] for k in range(1, 5)),
            quiz1=row["RandomFifthSentenceQuiz1"],
            quiz2=row["RandomFifthSentenceQuiz2"],
        )
        native = row["InputStoryid"].strip()
        record_id = f"storycloze-{native}" if native else f"storycloze-{split}-{index:05d}"
        records.append(ChoiceRecord(record_id, "storycloze", context, AB_OPTIONS, int(answer) - 1))
    return records


def _load_nli(folder: Path, split: str) -> list[ChoiceRecord]:
    """SNLI (the paper's NLI set): pool = validation.tsv, eval = test.tsv; labels outside 0/1/2 are skipped.

    The TSVs are pandas exports, so fields holding a double quote are CSV-quoted; the csv module undoes that.
    """
    path = require_file(folder / "snli", "validation.tsv" if split == "pool" else "test.tsv")
    records = []
    skipped = 0
    for index, (premise, hypothesis, label) in _read_table(path, NLI_COLUMNS, delimiter="\t"):
        if label.strip() not in SNLI_GOLD:
            skipped += 1  # HF exports mark pairs without a gold label as -1
            continue
        context = NLI_TEMPLATE.format(premise=premise, hypothesis=hypothesis)
        gold = SNLI_GOLD[label.strip()]
        records.append(ChoiceRecord(f"nli-{split}-{index:05d}", "nli", context, NLI_OPTIONS, gold))
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} row(s) whose label is not 0/1/2", stacklevel=3)
    return records


def _load_xnli_en(folder: Path, split: str) -> list[ChoiceRecord]:
    """XNLI-en dev (SADI's NLI source): pool = first half of its 2,490 rows, eval = second half.

    Only the labelled dev split is available here (no labelled XNLI-en test), so it is halved in file order.
    The file lists three hypotheses per premise and 1,245 is a multiple of three, so no premise straddles
    the cut.
    """
    path = require_file(folder / "xnli_en", "dev-en.tsv")
    with open(path, encoding="utf-8", newline="") as handle:
        # Raw TSV (no quoting), with CRLF line ends that the csv module absorbs.
        rows = [row for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if row]
    half = len(rows) // 2
    start, stop = (0, half) if split == "pool" else (half, len(rows))
    records = []
    for index in range(start, stop):
        row = rows[index]
        if len(row) != 3:
            raise DatasetError(f"{path}: row {index + 1} has {len(row)} fields, expected 3")
        premise, hypothesis, label = row
        if label.strip() not in XNLI_GOLD:
            raise DatasetError(
                f"{path}: row {index + 1} has label {label!r}, expected one of {list(XNLI_GOLD)}"
            )
        context = NLI_TEMPLATE.format(premise=premise, hypothesis=hypothesis)
        gold = XNLI_GOLD[label.strip()]
        records.append(ChoiceRecord(f"xnli_en-{split}-{index:05d}", "xnli_en", context, NLI_OPTIONS, gold))
    return records


def _load_mmlu(folder: Path, split: str) -> list[ChoiceRecord]:
    """MMLU, subjects in sorted order: pool = all dev rows (5 per subject), eval = all test rows.

    SADI scores and steers on the same test rows; the dev files give a disjoint pool instead. Ids are
    ``mmlu-{split}-{subject}-{row:03d}`` so the subject can be read back.
    """
    name = "dev" if split == "pool" else "test"
    paths = sorted((folder / name).glob(f"*_{name}.csv"))
    if not paths:
        raise DatasetError(f"missing data files {folder / name}/*_{name}.csv (no MMLU subject files found)")
    records = []
    for path in paths:
        subject = path.name[: -len(f"_{name}.csv")]
        # Plain csv, not pandas: answers such as "None" must stay strings.
        for index, (question, a, b, c, d, answer) in _read_table(path, MMLU_COLUMNS):
            if answer.strip() not in ("0", "1", "2", "3"):
                raise DatasetError(f"{path}: data row {index + 1} has answer {answer!r}, expected 0-3")
            context = MMLU_TEMPLATE.format(question=question, a=a, b=b, c=c, d=d)
            record_id = f"mmlu-{split}-{subject}-{index:03d}"
            records.append(ChoiceRecord(record_id, "mmlu", context, ABCD_OPTIONS, int(answer)))
    return records


def _load_sst2(folder: Path, split: str) -> list[ChoiceRecord]:
    """SST-2, lines ``<0|1> <sentence>`` (1 positive): pool = stsa.binary.train, eval = stsa.binary.test."""
    path = require_file(folder, "stsa.binary.train" if split == "pool" else "stsa.binary.test")
    records = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            label, _, text = line.partition(" ")
            if label not in SST2_GOLD or not text.strip():
                raise DatasetError(f"{path}:{lineno}: expected '<0|1> <sentence>', got {line.rstrip()!r}")
            context = SST2_TEMPLATE.format(text=text.strip())
            gold = SST2_GOLD[label]
            records.append(
                ChoiceRecord(f"sst2-{split}-{lineno - 1:05d}", "sst2", context, SST2_OPTIONS, gold)
            )
    return records


def parse_winogrande_instruction(instruction: str) -> tuple[str, str, str]:
    """``(sentence, option1, option2)`` recovered from LLM-Adapters' Winogrande instruction text."""
    markers = (_WINO_SENTENCE, _WINO_OPTION1, _WINO_OPTION2, _WINO_END)
    if any(instruction.count(marker) != 1 for marker in markers):
        raise DatasetError(f"cannot parse Winogrande instruction {instruction!r}")
    _, _, rest = instruction.partition(_WINO_SENTENCE)
    sentence, _, rest = rest.partition(_WINO_OPTION1)
    option1, _, rest = rest.partition(_WINO_OPTION2)
    option2, _, _ = rest.partition(_WINO_END)
    # partition only finds the markers in order; a reordered text leaves one of these empty.
    if not (sentence.strip() and option1.strip() and option2.strip()):
        raise DatasetError(f"cannot parse Winogrande instruction {instruction!r}")
    return sentence.strip(), option1.strip(), option2.strip()


def _load_winogrande(folder: Path, split: str) -> list[ChoiceRecord]:
    """Winogrande dev (1,267 rows): eval = its last 1,000 rows, pool = the first 267.

    No Winogrande training split is available here, so a disjoint slice of dev serves as the pool. The cut
    falls between two twin pairs in this file, so no twin sentence straddles it. Ids carry the file row.
    """
    path = require_file(folder, "test.json")
    with open(path, encoding="utf-8") as handle:
        try:
            items = json.load(handle)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(items, list) or len(items) <= WINOGRANDE_EVAL_SIZE:
        raise DatasetError(f"{path}: expected a JSON list of more than {WINOGRANDE_EVAL_SIZE} items")
    cut = len(items) - WINOGRANDE_EVAL_SIZE
    start, stop = (0, cut) if split == "pool" else (cut, len(items))
    records = []
    for index in range(start, stop):
        item = items[index]
        where = f"{path}: item {index}"
        if not isinstance(item, dict):
            raise DatasetError(f"{where}: expected a JSON object")
        try:
            sentence, option1, option2 = parse_winogrande_instruction(_field(item, "instruction", where))
        except DatasetError as exc:
            raise DatasetError(f"{where}: {exc}") from exc
        answer = _field(item, "answer", where).strip()
        if answer not in ("option1", "option2"):
            raise DatasetError(f"{where}: answer is {answer!r}, expected 'option1' or 'option2'")
        context = WINOGRANDE_TEMPLATE.format(sentence=sentence, option1=option1, option2=option2)
        gold = 0 if answer == "option1" else 1
        records.append(
            ChoiceRecord(f"winogrande-{split}-{index:05d}", "winogrande", context, AB_OPTIONS, gold)
        )
    return records


LOADERS: dict[str, Callable[[Path, str], list[ChoiceRecord]]] = {
    "copa": _load_copa,
    "storycloze": _load_storycloze,
    "nli": _load_nli,
    "mmlu": _load_mmlu,
    "sst2": _load_sst2,
    "winogrande": _load_winogrande,
    "xnli_en": _load_xnli_en,
}
