"""The ``fasb`` commands as a user meets them: every option's help and default, and the allenai judges placed
where the command says."""

from __future__ import annotations

import argparse

import pytest
import torch
from test_plan_golden import small_data_dir

import fasb_tl.models
from fasb_tl.cli import build_parser, main
from fasb_tl.evaluation.judges import HFJudge
from fasb_tl.evaluation.results import ResultStore
from fasb_tl.evaluation.runner import EvalPlan, run_plan
from fasb_tl.evaluation.truthfulqa import TruthfulQAConfig

TINY = ["--model", "tiny-random-llama"]


# -- help and defaults ---------------------------------------------------------------------------------------


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_option_of_every_command_has_help_that_shows_its_default():
    commands = subcommands()
    assert {"fit", "demo", "eval", "sweep", "bench"} <= set(commands)
    for name, parser in commands.items():
        shown = "".join(parser.format_help().split())  # argparse wraps lines, at hyphens too
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            where = f"fasb {name} {action.option_strings[0]}"
            assert action.help and action.help.strip(), f"{where} has no help text"
            expanded = parser._get_formatter()._expand_help(action)
            assert expanded.count("(default") == 1, f"{where}: {expanded!r}"
            assert "".join(expanded.split()) in shown, f"{where}: its help is not in --help"
    # The default is the value the option takes, not the text of the table it came from.
    shown = "".join(commands["eval"].format_help().split())
    assert "(default:200)" in shown and "(default:themiddle)" in shown


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
