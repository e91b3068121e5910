"""The ``fasb`` commands as a user meets them: the allenai judges placed where the command says."""

from __future__ import annotations

import pytest
import torch
from test_plan_golden import small_data_dir

import fasb_tl.models
from fasb_tl.cli import main
from fasb_tl.evaluation.judges import HFJudge
from fasb_tl.evaluation.results import ResultStore
from fasb_tl.evaluation.runner import EvalPlan, run_plan
from fasb_tl.evaluation.truthfulqa import TruthfulQAConfig

TINY = ["--model", "tiny-random-llama"]


@pytest.fixture(scope="module")
def small_data(tiny_model, data_dir, tmp_path_factory):
    """TruthfulQA questions that fit the tiny model's context, and COPA (as the golden plan reads them)."""
    return small_data_dir(tiny_model, data_dir, tmp_path_factory.mktemp("small") / "data")


# -- the judges' device and dtype ----------------------------------------------------------------------------


@pytest.fixture
def judged_on(monkeypatch) -> list[tuple[str, torch.dtype]]:
    """Where each allenai judge was asked to score (its device and dtype), with nothing downloaded."""
    seen = []

    def score(self, questions, answers, true_refs, false_refs):
        seen.append((self.name, self.device, self.dtype))
        return [1.0] * len(answers)

    monkeypatch.setattr(HFJudge, "_scores", score)
    return seen


def test_eval_puts_the_allenai_judges_on_the_commands_device_and_dtype(
    tiny_model, small_data, tmp_path, monkeypatch, judged_on
):
    loaded = {}

    def load(name, **placement):
        loaded.update(placement)
        return tiny_model  # a CPU stand-in for the model on "cuda:7"; the judges never load

    monkeypatch.setattr(fasb_tl.models, "load_model", load)
    argv = [
        "eval",
        *TINY,
        "--device",
        "cuda:7",
        "--dtype",
        "bfloat16",
        "--methods",
        "none",
        "--no-mc",
        "--k",
        "4",
    ]
    argv += ["--n-gen", "4", "--max-new-tokens", "2", "--judges", "allenai-truth,allenai-info"]
    assert main([*argv, "--data-dir", str(small_data), "--out", str(tmp_path)]) == 0
    assert loaded["device"] == "cuda:7" and loaded["dtype"] == "bfloat16"
    assert set(judged_on) == {
        ("allenai-truth", "cuda:7", torch.bfloat16),
        ("allenai-info", "cuda:7", torch.bfloat16),
    }
    assert all(row["allenai-truth"] == 1.0 for row in ResultStore(tmp_path).rows)


def test_run_plan_puts_the_judges_where_the_model_is_by_default(small_data, tmp_path, judged_on):
    model = fasb_tl.models.load_model("tiny-random-llama", dtype="bfloat16")
    plan = EvalPlan(
        tasks=["truthfulqa"],
        methods=["none"],
        truthfulqa=TruthfulQAConfig(k=4, n_generation=4, max_new_tokens=2),
        mc=False,
        judges=["allenai-truth"],
    )
    run_plan(model, plan, tmp_path, data_dir=str(small_data), progress=False)
    assert judged_on and set(judged_on) == {("allenai-truth", "cpu", torch.bfloat16)}
