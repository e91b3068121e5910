"""The ``fasb`` commands as a user meets them: every option's help and default, ``fasb generate`` against the
library's ``generate``, ``fasb eval --steerer`` (a supplied Steerer's rows kept apart from fitted ones, and
refused where it would mix results), and the allenai judges placed where the command says."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from reference_loop import splitting_thresholds
from test_plan_golden import small_data_dir

import fasb_tl.models
from fasb_tl.cli import build_parser, main
from fasb_tl.data import extract_answer, generation_prompt, load_truthfulqa
from fasb_tl.evaluation.judges import HFJudge
from fasb_tl.evaluation.results import ResultStore
from fasb_tl.evaluation.runner import EvalPlan, run_plan
from fasb_tl.evaluation.supplied import SuppliedSteererError, steerer_digest
from fasb_tl.evaluation.truthfulqa import TruthfulQAConfig, fold_splits
from fasb_tl.generation import GenerationConfig, generate
from fasb_tl.steering import Steerer

TINY = ["--model", "tiny-random-llama"]


class ModelLoaded(RuntimeError):
    """A command went as far as loading its model."""


@pytest.fixture
def no_model(monkeypatch):
    """Stop a command with :class:`ModelLoaded` where it would load its model."""

    def refuse(*args, **kwargs):
        raise ModelLoaded

    monkeypatch.setattr(fasb_tl.models, "load_model", refuse)


def refusal(argv: list[str], capsys) -> str:
    """The error line of a command that must stop (argparse's, or the command's own)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code != 0
    return capsys.readouterr().err.strip().splitlines()[-1] if stop.value.code == 2 else str(stop.value.code)


# -- help and defaults ---------------------------------------------------------------------------------------


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_option_of_every_command_has_help_that_shows_its_default():
    commands = subcommands()
    assert {"fit", "demo", "generate", "eval", "sweep", "bench"} <= set(commands)
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


# -- fasb generate -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def steerer_dir(steerer, tmp_path_factory):
    return steerer.save(tmp_path_factory.mktemp("generate") / "steerer")


def answers(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_generate_answers_every_prompt_as_the_library_does(
    tiny_model, steerer, steerer_dir, tmp_path, capsys
):
    questions = ["Is the sky green?", "Can pigs fly?", "Where is Paris?"]
    inputs = [generation_prompt(q) for q in questions]
    threshold = splitting_thresholds(tiny_model, steerer, inputs, back_steps=1, max_new_tokens=4)["monitor"]
    config = GenerationConfig(threshold=threshold, back_steps=1, max_new_tokens=4, alpha=5.0)
    expected = generate(tiny_model, inputs, steerer, config, progress=False)
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text(json.dumps({"prompt": questions[2]}) + "\n\n")
    out = tmp_path / "answers.jsonl"
    out.write_text("an earlier run\n")
    argv = [
        "generate",
        *TINY,
        "--steerer",
        str(steerer_dir),
        *questions[:2],
        "--prompts-file",
        str(prompts_file),
    ]
    argv += ["--threshold", str(threshold), "--back-steps", "1", "--max-new-tokens", "4", "--alpha", "5"]
    assert main([*argv, "--out", str(out), "--overwrite"]) == 0
    written = answers(out)
    assert [r["prompt"] for r in written] == questions
    for record, result in zip(written, expected):
        assert record["token_ids"] == result.token_ids and record["triggered"] == result.triggered
        assert record["p_true_trace"] == pytest.approx(result.p_true_trace)
        assert record["removed_token_ids"] == result.removed_token_ids
        assert record["answer"] == extract_answer(result.text)
        assert ("[-" in record["backtrack"]) == (result.triggered and result.steered_from is not None)
        assert record["config"]["threshold"] == threshold and record["model"] == "tiny-random-llama"
    assert {r.triggered for r in expected} == {True, False}  # the threshold splits the prompts
    printed = capsys.readouterr().out
    assert [line[2:] for line in printed.splitlines() if line.startswith("> ")] == questions
    assert printed.count("FASB: triggered at answer token") == sum(r.triggered for r in expected)


def test_generate_raw_prompts_with_sampling_matches_the_library(tiny_model, steerer, steerer_dir, tmp_path):
    prompts = ["Q: Is ice cold? A:", "Q: Do fish swim? A:"]
    config = GenerationConfig(
        method="iti",
        alpha=2.0,
        max_new_tokens=3,
        do_sample=True,
        temperature=0.7,
        top_k=5,
        top_p=0.9,
        seed=3,
        num_return_sequences=2,
    )
    expected = generate(tiny_model, prompts, steerer, config, progress=False)
    out = tmp_path / "raw.jsonl"
    argv = ["generate", *TINY, "--steerer", str(steerer_dir), "--raw", "--method", "iti", "--alpha", "2"]
    argv += ["--max-new-tokens", "3", "--sample", "--temperature", "0.7", "--top-k", "5", "--top-p", "0.9"]
    assert main([*argv, "--seed", "3", "--num-return-sequences", "2", "--out", str(out), *prompts]) == 0
    written = answers(out)
    assert [(r["prompt"], r["sequence"]) for r in written] == [(p, j) for p in prompts for j in (0, 1)]
    assert [r["token_ids"] for r in written] == [r.token_ids for r in expected]
    assert [r["answer"] for r in written] == [r.text for r in expected]  # --raw: the text as generated


def test_generate_refuses_bad_input_before_the_model_loads(steerer_dir, tmp_path, no_model, capsys):
    existing = tmp_path / "existing.jsonl"
    existing.write_text("keep me\n")
    no_prompt = tmp_path / "bad.jsonl"
    no_prompt.write_text('{"question": "no prompt field"}\n')
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    steerer = ["--steerer", str(steerer_dir)]
    cases = [
        (["--steerer", str(tmp_path / "missing"), "q?"], "argument --steerer: no folder"),
        (["--steerer", str(empty_folder), "q?"], "argument --steerer: "),
        ([*steerer], "no prompts"),
        ([*steerer, ""], "argument prompts"),
        ([*steerer, "--prompts-file", str(tmp_path / "nowhere.txt")], "argument --prompts-file: cannot read"),
        (
            [*steerer, "--prompts-file", str(no_prompt)],
            'bad.jsonl:1: expected an object with a non-empty "prompt"',
        ),
        ([*steerer, "--prompts-file", str(blank)], "holds no prompts"),
        ([*steerer, "q?", "--out", str(existing)], "argument --out: "),
        ([*steerer, "q?", "--out", str(tmp_path)], "argument --out: "),
        ([*steerer, "q?", "--num-return-sequences", "2"], "argument --num-return-sequences"),
        ([*steerer, "q?", "--temperature", "0"], "argument --temperature: expected a finite number > 0"),
        ([*steerer, "q?", "--method", "caa"], "argument --method"),
    ]
    for argv, expected in cases:
        message = refusal(["generate", *TINY, *argv], capsys)
        assert message.startswith("fasb generate: error: ") and expected in message, (argv, message)
    assert existing.read_text() == "keep me\n"


def test_generate_refuses_a_steerer_of_another_model(steerer_dir, tmp_path, capsys):
    out = tmp_path / "answers.jsonl"
    argv = ["generate", "--model", "tiny-random-gpt2", "--steerer", str(steerer_dir), "q?", "--out", str(out)]
    message = refusal(argv, capsys)
    assert message.startswith("fasb generate: error: argument --steerer: ") and "tiny-random-llama" in message
    assert not out.exists()


# -- fasb eval --steerer -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data(tiny_model, data_dir, tmp_path_factory):
    """TruthfulQA questions that fit the tiny model's context, and COPA (as the golden plan reads them)."""
    return small_data_dir(tiny_model, data_dir, tmp_path_factory.mktemp("small") / "data")


COPA = [
    "--task",
    "copa",
    "--methods",
    "none,fasb",
    "--protocols",
    "question",
    "--n-items",
    "6",
    "--n-pool",
    "10",
]


def test_eval_with_a_supplied_steerer_keys_its_rows_apart(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    common = ["eval", *TINY, *COPA, "--alpha", "5", "--data-dir", str(data_dir), "--out", str(out)]
    assert main([*common, "--k", "4"]) == 0
    fitted = ResultStore(out).rows
    (folder,) = (out / "steerers").iterdir()
    supplied = Steerer.load(folder)
    capsys.readouterr()
    # No --k: the default 24 does not fit the tiny model, so passing shows that the Steerer's K is used.
    assert main([*common, "--steerer", str(folder)]) == 0
    assert list((out / "steerers").iterdir()) == [folder]  # nothing fitted
    rows = ResultStore(out).rows
    added = rows[len(fitted) :]
    assert len(added) == len(fitted) == 2
    assert {r["steerer"] for r in added} == {steerer_digest(supplied)} and all(
        "steerer" not in r for r in fitted
    )
    assert not {r["key"] for r in added} & {r["key"] for r in fitted}
    assert all(r["config"]["k"] == 4 for r in added)
    by_method = {r["method"]: r for r in fitted}
    for row in added:  # the same Steerer on the same items: the same results, under another key
        assert row["per_item"] == by_method[row["method"]]["per_item"]
    assert f"steerer={steerer_digest(supplied)}" in capsys.readouterr().out  # its own table section
    assert main([*common, "--steerer", str(folder)]) == 0
    assert len(ResultStore(out).rows) == len(rows)  # resumed: nothing computed twice


def test_eval_with_a_truthfulqa_steerer_runs_only_its_fold(steerer, tmp_path, small_data):
    # The fixture's tensors, recorded as fitted for fold 1 of the small TruthfulQA's split: rows from fold 0
    # would evaluate it on questions it was fitted on.
    records = load_truthfulqa(small_data)
    split = fold_splits(len(records), TruthfulQAConfig())[1]
    meta = {
        "dataset": "truthfulqa",
        "fold": 1,
        "split_seed": 42,
        "n_train": len(split.train),
        "n_val": len(split.val),
    }
    folder = relabelled(steerer, **meta).save(tmp_path / "steerer")
    out = tmp_path / "run"
    argv = ["eval", *TINY, "--steerer", str(folder), "--methods", "none,fasb", "--protocols", "question"]
    argv += [
        "--n-mc",
        "8",
        "--n-gen",
        "8",
        "--max-new-tokens",
        "3",
        "--alpha",
        "5",
        "--data-dir",
        str(small_data),
    ]
    assert main([*argv, "--out", str(out)]) == 0
    rows = ResultStore(out).rows
    digest = steerer_digest(steerer)
    assert sorted((r["task"], r["method"], r["fold"], r["steerer"]) for r in rows) == [
        ("truthfulqa-gen", "fasb", 1, digest),
        ("truthfulqa-gen", "none", 1, digest),
        ("truthfulqa-mc", "fasb/question", 1, digest),
        ("truthfulqa-mc", "none", 1, digest),
    ]
    held_out = {records[i].id for i in split.test}
    assert all(r["question_ids"] and set(r["question_ids"]) <= held_out for r in rows)
    assert sorted(p.name for p in (out / "answers").iterdir()) == [
        f"fasb-fold1-steerer-{digest}.csv",
        f"none-fold1-steerer-{digest}.csv",
    ]
    assert not (out / "steerers").exists()  # nothing fitted


def relabelled(steerer: Steerer, **meta) -> Steerer:
    return replace(steerer, meta=replace(steerer.meta, **meta))


def eval_argv(steerer_folder, data, out, *extra: str) -> list[str]:
    """``fasb eval`` on the tiny model with a supplied Steerer."""
    return [
        "eval",
        *TINY,
        *extra,
        "--steerer",
        str(steerer_folder),
        "--data-dir",
        str(data),
        "--out",
        str(out),
    ]


def test_eval_refuses_a_steerer_that_would_mix_results_before_the_model_loads(
    steerer, small_data, tmp_path, no_model, capsys
):
    n = len(load_truthfulqa(small_data))
    split = fold_splits(n, TruthfulQAConfig())[0]
    tqa = {
        "dataset": "truthfulqa",
        "fold": 0,
        "split_seed": 42,
        "n_train": len(split.train),
        "n_val": len(split.val),
    }
    cases = [
        (steerer, [], "fitted on 'unknown'"),
        (
            relabelled(steerer, **{**tqa, "n_train": len(split.train) - 1}),
            [],
            "would not be the plan's test fold",
        ),
        (relabelled(steerer, **{**tqa, "split_seed": 7}), [], "(7, "),
        (relabelled(steerer, **{**tqa, "fold": 2}), [], "folds 0 to 1"),
        (relabelled(steerer, **tqa), ["--task", "truthfulqa,copa"], "runs only the task it was fitted for"),
        (relabelled(steerer, dataset="copa"), ["--task", "sst2"], "fitted on 'copa'"),
    ]
    for index, (candidate, extra, expected) in enumerate(cases):
        folder = candidate.save(tmp_path / f"steerer{index}")
        out = tmp_path / f"out{index}"
        message = refusal(eval_argv(folder, small_data, out, *extra), capsys)
        assert message.startswith("fasb eval: error: argument --steerer: ") and expected in message, message
        assert not out.exists()
    # The split that fits is accepted up to the model (which this test refuses to load).
    folder = relabelled(steerer, **tqa).save(tmp_path / "fits")
    with pytest.raises(ModelLoaded):
        main(eval_argv(folder, small_data, tmp_path / "o"))
    argv = ["sweep", *TINY, "--steerer", str(folder), "--grid-k", "2,4", "--out", str(tmp_path / "sweep")]
    assert "argument --grid-k" in refusal(argv, capsys)


def test_eval_refuses_a_steerer_of_another_model_before_any_row(steerer, tmp_path, data_dir, capsys):
    folder = relabelled(steerer, dataset="copa").save(tmp_path / "steerer")
    out = tmp_path / "out"
    argv = ["eval", "--model", "tiny-random-gpt2", *COPA, "--steerer", str(folder), "--out", str(out)]
    message = refusal([*argv, "--data-dir", str(data_dir)], capsys)
    assert message.startswith("fasb eval: error: argument --steerer: ") and "tiny-random-llama" in message
    assert not (out / "results.jsonl").exists()


def test_run_plan_refuses_a_supplied_steerer_whose_k_the_config_does_not_record(
    tiny_model, steerer, tmp_path, data_dir
):
    copa = relabelled(steerer, dataset="copa")
    plan = EvalPlan(tasks=["copa"], methods=["fasb"], protocols=["question"])
    with pytest.raises(SuppliedSteererError, match="K=4"):
        run_plan(tiny_model, plan, tmp_path, data_dir=str(data_dir), steerer=copa, progress=False)
    assert plan.with_steerer(copa).multichoice.k == 4
    assert not (tmp_path / "results.jsonl").exists()


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


def test_plot_draws_a_result_folders_figures_where_asked(tmp_path, capsys):
    committed = Path(__file__).resolve().parents[1] / "results" / "reduced" / "smollm2-135m-instruct"
    before = sorted(p.name for p in committed.iterdir())
    assert main(["plot", str(committed), "--out", str(tmp_path / "figures")]) == 0
    written = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert "truthfulqa_mc2.png" in written and any(name.startswith("heads_") for name in written)
    assert f"truthfulqa_mc2: {tmp_path / 'figures' / 'truthfulqa_mc2.png'}" in capsys.readouterr().out
    assert sorted(p.name for p in committed.iterdir()) == before


def test_plot_refuses_a_folder_that_holds_no_results(tmp_path, capsys):
    message = refusal(["plot", str(tmp_path)], capsys)
    assert "fasb plot: error:" in message and str(tmp_path) in message and "results.jsonl" in message


def test_the_controls_and_tie_rule_options_reach_the_plan():
    from fasb_tl.cli import _plan

    args = build_parser().parse_args(
        [
            "eval",
            "--controls",
            "random_heads,reversed",
            "--n-random",
            "2",
            "--tie-break",
            "lowest",
            "--task",
            "copa",
        ]
    )
    plan = _plan(args)
    assert plan.multichoice.tie_break == "lowest" and plan.truthfulqa.tie_break == "lowest"
    assert [v.suffix() for v in plan.variants][1:] == ["~random_heads0", "~random_heads1", "~reversed"]
