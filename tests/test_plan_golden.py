"""A small plan on the tiny model must give the same rows, keys and values as the code that wrote the golden file
(``tests/golden/small_plan.json``), so refactoring the evaluation layer cannot change a result unnoticed.

The golden file was written by ``python tests/test_plan_golden.py`` before the redesign of the evaluation layer;
rewrite it only for a change that is meant to change results, and say so in the commit.

The plan reads a small TruthfulQA: the first questions (``mc_task.json`` order) whose every answer fits the tiny
model's 1024-token context after the generation prompt's ~800-token instruction and primer. On all 817 questions
the calibrated threshold replays validation answers that do not fit (``ContextLengthError``).
"""

import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from fasb_tl.data import generation_prompt, load_truthfulqa
from fasb_tl.data.paths import repository_data_dir
from fasb_tl.evaluation.multichoice import MultiChoiceConfig
from fasb_tl.evaluation.results import ResultStore
from fasb_tl.evaluation.runner import EvalPlan, run_plan
from fasb_tl.evaluation.truthfulqa import GENERATION_METHODS, TruthfulQAConfig
from fasb_tl.models import encode, load_model

GOLDEN = Path(__file__).resolve().parent / "golden" / "small_plan.json"
# Fields that describe the run, not its result.
VOLATILE = ("seconds", "version")

SMALL_PLAN = EvalPlan(
    tasks=["truthfulqa", "copa"],
    methods=list(GENERATION_METHODS),
    truthfulqa=TruthfulQAConfig(k=4, alpha=5.0, back_steps=2, max_new_tokens=4, n_mc=6, n_generation=4),
    multichoice=MultiChoiceConfig(n_pool=12, n_eval=6, k=4, alpha=5.0),
    detection=True,
    controls=["reversed", "random"],
    n_random=1,
    thresholds=["fixed", "calibrated"],
)


N_QUESTIONS = 60
# Room left in the context for the answer tokens a generation adds.
CONTEXT_MARGIN = 8


def small_data_dir(model, data_dir: Path, folder: Path) -> Path:
    """A data folder with the first ``N_QUESTIONS`` TruthfulQA questions that fit the model (see the module
    docstring) and the checkout's COPA."""
    limit = int(model.cfg.n_ctx) - CONTEXT_MARGIN
    fitting = set()
    for record in load_truthfulqa(data_dir):
        answers = {answer for answer, _ in record.answers}
        answers |= {
            *record.extra["correct_answers"],
            *record.extra["incorrect_answers"],
            record.extra["best_answer"],
        }
        prompt = generation_prompt(record.question) + "\nA: "
        if all(len(encode(model, prompt + answer)) <= limit for answer in answers):
            fitting.add(record.question)
        if len(fitting) == N_QUESTIONS:
            break
    items = json.loads((data_dir / "truthfulqa" / "mc_task.json").read_text(encoding="utf-8"))
    (folder / "truthfulqa").mkdir(parents=True)
    kept = [item for item in items if item["question"] in fitting]
    (folder / "truthfulqa" / "mc_task.json").write_text(json.dumps(kept), encoding="utf-8")
    # The loader matches CSV rows to the JSON's questions, so the whole CSV can stay.
    shutil.copy(data_dir / "truthfulqa" / "TruthfulQA.csv", folder / "truthfulqa")
    (folder / "copa").symlink_to(data_dir / "copa", target_is_directory=True)
    return folder


def small_plan_rows(model, data_dir: Path, folder: Path) -> list[dict]:
    out = folder / "out"
    run_plan(
        model, SMALL_PLAN, out, data_dir=small_data_dir(model, data_dir, folder / "data"), progress=False
    )
    rows = [{k: v for k, v in row.items() if k not in VOLATILE} for row in ResultStore(out).rows]
    return sorted(rows, key=lambda row: row["key"])


def assert_same(got, want, where: str, rel: float = 1e-6) -> None:
    """Equal structure and values, floats to a relative ``rel`` (and 1e-6 absolute)."""
    if isinstance(want, float) and isinstance(got, float):
        assert math.isclose(got, want, rel_tol=rel, abs_tol=1e-6) or (math.isnan(got) and math.isnan(want)), (
            f"{where}: {got} != {want}"
        )
    elif isinstance(want, dict) and isinstance(got, dict):
        assert sorted(got) == sorted(want), f"{where}: fields {sorted(got)} != {sorted(want)}"
        for name in want:
            assert_same(got[name], want[name], f"{where}.{name}", rel)
    elif isinstance(want, list) and isinstance(got, list):
        assert len(got) == len(want), f"{where}: {len(got)} items != {len(want)}"
        for i, (a, b) in enumerate(zip(got, want)):
            assert_same(a, b, f"{where}[{i}]", rel)
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def test_a_small_plan_gives_the_golden_rows(tiny_model, data_dir, tmp_path):
    want = json.loads(GOLDEN.read_text())
    got = small_plan_rows(tiny_model, data_dir, tmp_path)
    assert [row["key"] for row in got] == [row["key"] for row in want]
    for row, expected in zip(got, want):
        assert_same(row, expected, f"{expected['task']}/{expected['method']}/{expected['key']}")


def test_the_comparison_notices_a_changed_value():
    row = {"key": "k", "mc2": 0.5, "per_question": {"mc2": [0.25, 0.75]}}
    assert_same(row, json.loads(json.dumps(row)), "row")
    with pytest.raises(AssertionError, match="per_question.mc2"):
        assert_same({**row, "per_question": {"mc2": [0.25, 0.7501]}}, row, "row")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        rows = small_plan_rows(load_model("tiny-random-llama"), repository_data_dir(), Path(folder))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(rows)} rows to {GOLDEN}", file=sys.stderr)
