import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fasb_tl.activations import collect_head_activations
from fasb_tl.caa import CAAConfig
from fasb_tl.cli import main
from fasb_tl.data import load_truthfulqa, probe_bank
from fasb_tl.evaluation.context import EvalContext
from fasb_tl.evaluation.detection import run_detection
from fasb_tl.evaluation.multichoice import MultiChoiceConfig, run_multichoice
from fasb_tl.evaluation.results import ResultStore, row_key
from fasb_tl.evaluation.rows import row_identity
from fasb_tl.evaluation.runner import EvalPlan, sweep_plans
from fasb_tl.evaluation.tables import Column, multichoice_table, truthfulqa_table, uncertainty_table
from fasb_tl.evaluation.truthfulqa import (
    TruthfulQAConfig,
    TruthfulQAFolds,
    mc_metrics,
    reference_answers,
    run_mc,
)
from fasb_tl.evaluation.truthfulqa_generation import run_generation
from fasb_tl.evaluation.variants import plan_variants, row_variant

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))
import reproduce_tables
from test_plan_golden import assert_same

TINY_TQA = TruthfulQAConfig(k=4, alpha=5.0, back_steps=2, max_new_tokens=4, n_mc=8, n_generation=6)


def test_mc_metrics_follow_the_truthfulqa_definitions():
    # Two true answers (best first) and two false ones, as log-probabilities.
    metrics = mc_metrics([-1.0, -5.0], [-2.0, -3.0], best_index=0)
    assert metrics["mc1"] == 1.0  # the best answer beats every false one
    assert metrics["mc3"] == 0.5  # one of the two true answers beats every false one
    expected = (np.exp(-1) + np.exp(-5)) / (np.exp(-1) + np.exp(-5) + np.exp(-2) + np.exp(-3))
    assert metrics["mc2"] == pytest.approx(expected)
    assert mc_metrics([-1.0, -5.0], [-2.0, -3.0], best_index=1)["mc1"] == 0.0
    assert mc_metrics([-900.0], [-901.0], best_index=0)["mc2"] == pytest.approx(1 / (1 + np.exp(-1)))
    with pytest.raises(ValueError, match="at least one true and one false"):
        mc_metrics([-1.0], [], 0)


def test_reference_answers_include_the_best_answer(data_dir):
    for record in load_truthfulqa(data_dir)[:50]:
        true, false, best = reference_answers(record)
        assert true[best] == record.extra["best_answer"] and false


@pytest.fixture(scope="module")
def truthfulqa(data_dir):
    return load_truthfulqa(data_dir)[:40]


def tqa_folds(model, records, out, **options) -> TruthfulQAFolds:
    return TruthfulQAFolds(EvalContext.create(model, out, **options), records=records, config=TINY_TQA)


def run_tqa(model, records, out, methods=("none", "fasb")):
    folds = tqa_folds(model, records, out, progress=False)
    run_mc(folds, methods=methods)
    run_generation(folds, methods=methods)
    return ResultStore(out).rows


def test_truthfulqa_protocol_rows_and_resume(tiny_model, truthfulqa, tmp_path):
    rows = run_tqa(tiny_model, truthfulqa, tmp_path)
    mc = [r for r in rows if r["task"] == "truthfulqa-mc"]
    gen = [r for r in rows if r["task"] == "truthfulqa-gen"]
    assert sorted((r["method"], r["fold"]) for r in mc) == sorted(
        (m, f) for m in ("none", "fasb/paper", "fasb/question") for f in (0, 1)
    )
    assert len(gen) == 4 and all(0 <= r["mc2"] <= 1 for r in mc)
    assert all(r["n_questions"] > 0 and r["config"]["k"] == 4 and r["version"] for r in rows)
    none = next(r for r in mc if r["method"] == "none")
    assert none["steered_fraction"] == 0.0 and none["loglik_change_true"] == 0.0
    assert (tmp_path / "answers" / "fasb-fold0.csv").is_file()
    assert len(run_tqa(tiny_model, truthfulqa, tmp_path)) == len(rows)


def test_an_interrupted_run_resumes_without_duplicates(tiny_model, truthfulqa, tmp_path, monkeypatch):
    reference = run_tqa(tiny_model, truthfulqa, tmp_path / "straight")
    original_add = ResultStore.add
    calls = {"n": 0}

    def add_then_die(self, row, persist=True):
        original_add(self, row, persist)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ResultStore, "add", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_tqa(tiny_model, truthfulqa, tmp_path / "resumed")
    monkeypatch.undo()
    assert len(ResultStore(tmp_path / "resumed").rows) == 2
    resumed = run_tqa(tiny_model, truthfulqa, tmp_path / "resumed")
    assert len({r["key"] for r in resumed}) == len(resumed) == len(reference)
    by_key = {r["key"]: r for r in reference}
    for row in resumed:
        for metric in ("mc1", "mc2", "mc3", "bleu-proxy", "info-proxy"):
            if metric in row:
                assert row[metric] == pytest.approx(by_key[row["key"]][metric])


def test_multichoice_task_rows(tiny_model, tmp_path, data_dir):
    config = MultiChoiceConfig(n_pool=12, n_eval=8, k=4, alpha=5.0)
    ctx = EvalContext.create(tiny_model, tmp_path, data_dir=str(data_dir), progress=False)
    run_multichoice(ctx, task="sst2", config=config, methods=("none", "iti", "caa", "fasb"))
    rows = ResultStore(tmp_path).rows
    assert {r["method"] for r in rows} == {"none", "iti", "caa", "fasb/paper", "fasb/question"}
    assert next(r for r in rows if r["method"] == "caa")["caa"] == {"layer": None, "multiplier": 1.0}
    none = next(r for r in rows if r["method"] == "none")
    assert none["accuracy"] == none["unsteered_accuracy"] and none["n_items"] == 8
    assert all(r["accuracy"] == np.mean(r["per_item"]["correct"]) for r in rows)


def test_tables_average_folds_and_multiply_true_by_info():
    judges = {"bleu-proxy": {"kind": "truth", "proxy": True}, "info-proxy": {"kind": "info", "proxy": True}}
    rows = [
        {"task": "truthfulqa-gen", "method": "fasb", "bleu-proxy": 0.5, "info-proxy": 0.8, "judges": judges},
        {"task": "truthfulqa-gen", "method": "fasb", "bleu-proxy": 0.7, "info-proxy": 1.0, "judges": judges},
        {"task": "truthfulqa-mc", "method": "fasb/paper", "mc1": 0.2, "mc2": 0.4},
        {"task": "truthfulqa-mc", "method": "fasb/paper", "mc1": 0.4, "mc2": 0.6},
        {"task": "copa", "method": "iti", "accuracy": 0.5},
        {"task": "sst2", "method": "iti", "accuracy": 0.7},
    ]
    table = truthfulqa_table(rows)
    assert table.loc["fasb", "True (bleu-proxy)"] == pytest.approx(60.0)
    assert table.loc["fasb", "True*Info (bleu-proxy x info-proxy)"] == pytest.approx(60.0 * 0.9)
    assert table.loc["fasb", "MC1 (paper)"] == pytest.approx(30.0)
    six = multichoice_table(rows)
    assert six.loc["iti", "Avg"] == pytest.approx(60.0)


def test_result_store_refuses_duplicates_and_survives_reload(tmp_path):
    store = ResultStore(tmp_path)
    store.add({"key": row_key(a=1), "value": 1})
    with pytest.raises(ValueError, match="stored already"):
        store.add({"key": row_key(a=1), "value": 2})
    assert ResultStore(tmp_path).rows == [{"key": row_key(a=1), "value": 1}]
    assert row_key(a=1, b=2) == row_key(b=2, a=1) != row_key(a=2, b=2)


def test_sweep_grid_and_bad_names():
    plan = EvalPlan(tasks=["copa"], methods=["fasb"])
    plans = sweep_plans(plan, {"alpha": [1.0, 2.0], "k": [4, 8, 12]})
    assert len(plans) == 6 and {(p.multichoice.alpha, p.multichoice.k) for p in plans} == {
        (a, k) for a in (1.0, 2.0) for k in (4, 8, 12)
    }
    with pytest.raises(ValueError, match="cannot sweep"):
        sweep_plans(plan, {"temperature": [1.0]})
    with pytest.raises(ValueError, match="unknown task"):
        EvalPlan(tasks=["gsm8k"], methods=["none"])


def test_fasb_eval_cli_reruns_without_duplicating(tmp_path, data_dir, capsys):
    args = [
        "eval",
        "--model",
        "tiny-random-llama",
        "--task",
        "copa",
        "--methods",
        "none,iti",
        "--n-items",
        "6",
        "--n-pool",
        "10",
        "--k",
        "4",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    first = (tmp_path / "results.jsonl").read_text().splitlines()
    assert main(args) == 0
    assert (tmp_path / "results.jsonl").read_text().splitlines() == first
    assert {json.loads(line)["method"] for line in first} == {"none", "iti"}
    assert "| copa |" in capsys.readouterr().out


# Runs in a child process: SIGKILL itself at the chosen atomic write, after the temporary file is written and
# before the rename, i.e. at the worst moment for the result files.
KILL_AT_WRITE = """
import os, signal, sys
import fasb_tl.evaluation.results as results
from fasb_tl.cli import main

kill_at, writes, real_replace = int(sys.argv[1]), [], os.replace

def replace_or_die(src, dst):
    writes.append(dst)
    if len(writes) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)

results.os.replace = replace_or_die
sys.exit(main(sys.argv[2:]))
"""


def test_a_sigkilled_sweep_resumes_to_the_uninterrupted_result(tmp_path, data_dir):
    args = ["sweep", "--model", "tiny-random-llama", "--task", "copa", "--methods", "none,fasb"]
    args += [
        "--n-items",
        "6",
        "--n-pool",
        "10",
        "--k",
        "4",
        "--grid-alpha",
        "1,5",
        "--data-dir",
        str(data_dir),
    ]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    reference = ResultStore(tmp_path / "straight").rows
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_WRITE, "5", *args, "--out", str(tmp_path / "killed")],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial = ResultStore(tmp_path / "killed").rows
    assert 0 < len(partial) < len(reference)
    assert main([*args, "--out", str(tmp_path / "killed")]) == 0
    resumed = ResultStore(tmp_path / "killed").rows
    assert sorted(r["key"] for r in resumed) == sorted(r["key"] for r in reference)
    by_key = {r["key"]: r for r in reference}
    for row in resumed:
        expected = by_key[row["key"]]
        # The killed run used one thread, the reference two: sums may differ in the last bits of float32.
        assert_same(
            {k: v for k, v in row.items() if k != "seconds"},
            {k: v for k, v in expected.items() if k != "seconds"},
            row["key"],
            rel=1e-5,
        )


def test_controls_and_calibrated_variants_sit_beside_the_plain_rows(
    tiny_model, truthfulqa, tmp_path, data_dir
):
    plain_only = run_tqa(tiny_model, truthfulqa, tmp_path / "plain", methods=("none", "iti", "fasb"))
    folds = tqa_folds(tiny_model, truthfulqa, tmp_path / "all", progress=False)
    variants = plan_variants(["reversed", "random"], n_random=2, thresholds=["fixed", "calibrated"])
    run_mc(folds, methods=("none", "iti", "fasb"), variants=variants)
    run_generation(folds, methods=("none", "iti", "fasb"), variants=variants)
    rows = ResultStore(tmp_path / "all").rows
    # The plain rows keep the keys (and values) they have without variants.
    plain = {r["key"]: r for r in rows if not row_variant(r)}
    assert set(plain) == {r["key"] for r in plain_only}
    for row in plain_only:
        assert row.get("mc2") == plain[row["key"]].get("mc2")
    labels = {(r["task"], r["method"], row_variant(r), r.get("control_seed"), r["fold"]) for r in rows}
    assert ("truthfulqa-mc", "fasb/paper", "random", 1, 0) in labels
    assert ("truthfulqa-gen", "iti", "reversed", None, 1) in labels
    assert ("truthfulqa-mc", "iti", "calibrated", None, 0) not in labels  # iti has no threshold
    assert not any(r["method"] == "none" and row_variant(r) for r in rows)
    calibrated = [r for r in rows if row_variant(r) == "calibrated"]
    assert calibrated and all(r["threshold_used"] == r["calibration"]["threshold"] for r in calibrated)
    assert len({r["key"] for r in rows}) == len(rows)
    # Controls change the steered scores but not the gating.
    fasb = {
        (row_variant(r), r.get("control_seed"), r["fold"]): r for r in rows if r["method"] == "fasb/paper"
    }
    assert fasb[("reversed", None, 0)]["steered_fraction"] == fasb[("", None, 0)]["steered_fraction"]
    assert fasb[("reversed", None, 0)]["per_question"] != fasb[("", None, 0)]["per_question"]
    # Tables select one variant at a time; random seeds are averaged.
    random_mc2 = truthfulqa_table(rows, "random").loc["fasb", "MC2 (paper)"]
    seeds = [r["mc2"] for r in rows if r["method"] == "fasb/paper" and row_variant(r) == "random"]
    assert random_mc2 == pytest.approx(100 * np.mean(seeds))
    assert truthfulqa_table(rows).loc["fasb", "MC2 (paper)"] == pytest.approx(
        100 * np.mean([plain[k]["mc2"] for k in plain if plain[k]["method"] == "fasb/paper"])
    )
    frame = uncertainty_table(rows, {"mc2": Column("truthfulqa-mc", ("mc2",), "paper")}, variant="reversed")
    assert list(frame.index) == ["iti", "fasb"]
    run_detection(folds)
    (tmp_path / "reading.md").write_text("Reversed steering also helps here.\n")
    report = reproduce_tables.write_report(
        argparse.Namespace(
            model="tiny", command="test", report=tmp_path / "report.md", reading=tmp_path / "reading.md"
        ),
        ResultStore(tmp_path / "all"),
        ResultStore(tmp_path / "all"),
    ).read_text()
    assert "fasb (reversed)" in report and "fasb (calibrated)" in report and "Not computed" not in report
    assert "- fold 1: threshold" in report
    assert "| text only (bag of words) |" in report
    assert "## In plain words" in report and "Reversed steering also helps here." in report


def test_detection_rows_compare_the_fold_probes_with_a_text_only_detector(tiny_model, truthfulqa, tmp_path):
    steerers = tmp_path / "shared-steerers"
    folds = tqa_folds(tiny_model, truthfulqa, tmp_path / "run", progress=False, steerer_dir=steerers)
    run_detection(folds)
    rows = ResultStore(tmp_path / "run").rows
    assert sorted((r["method"], r["fold"]) for r in rows) == [
        ("probes", 0),
        ("probes", 1),
        ("text_only", 0),
        ("text_only", 1),
    ]
    [fold0] = steerers.glob("fold0-mass_mean-k4-*")  # the name ends in a hash of model, data and settings
    assert (fold0 / "steerer.json").is_file()  # shared, not under run/
    assert not (tmp_path / "run" / "steerers").exists()
    # The probes' AUROC again, reading each head straight from every layer's hook_z (not through head_values).
    split = folds.splits[1]
    test = [truthfulqa[i] for i in split.test]
    bank = probe_bank(test)
    steerer = folds.steerer(1)
    z = collect_head_activations(tiny_model, bank.prompts, progress=False)
    p_true = steerer.p_true(z[:, steerer.heads[:, 0], steerer.heads[:, 1]])
    probes = next(r for r in rows if r["method"] == "probes" and r["fold"] == 1)
    assert probes["auroc"] == pytest.approx(roc_auc_score(bank.labels.numpy(), p_true.numpy()))
    assert probes["n_answers"] == len(bank.labels)
    # Rerunning computes nothing new and a second folder reuses the shared Steerer.
    run_detection(folds)
    assert len(ResultStore(tmp_path / "run").rows) == 4
    again = tqa_folds(tiny_model, truthfulqa, tmp_path / "b", steerer_dir=steerers)
    assert torch.equal(again.steerer(1).directions, steerer.directions)


def test_multichoice_controls_and_plan_validation(tiny_model, tmp_path, data_dir):
    config = MultiChoiceConfig(n_pool=12, n_eval=8, k=4, alpha=5.0)
    run_multichoice(
        EvalContext.create(tiny_model, tmp_path, data_dir=str(data_dir), progress=False),
        task="copa",
        config=config,
        methods=("none", "iti"),
        protocols=("paper",),
        variants=plan_variants(["reversed"], thresholds=["fixed", "calibrated"]),
    )
    rows = ResultStore(tmp_path).rows
    assert sorted((r["method"], row_variant(r)) for r in rows) == [
        ("iti", ""),
        ("iti", "reversed"),
        ("none", ""),
    ]
    with pytest.raises(ValueError, match="unknown control"):
        EvalPlan(tasks=["copa"], methods=["iti"], controls=["sideways"])
    with pytest.raises(ValueError, match="threshold mode"):
        EvalPlan(tasks=["copa"], methods=["iti"], thresholds=["adaptive"])


def test_plain_row_keys_match_the_committed_results():
    """Keys must not drift: a committed result folder resumes only if today's code derives the same keys."""
    folder = Path(__file__).resolve().parents[1] / "results" / "reduced" / "smollm2-135m-instruct"
    rows = ResultStore(folder).rows
    model = SimpleNamespace(cfg=SimpleNamespace(model_name=rows[0]["model"]))
    copa = next(r for r in rows if r["task"] == "copa" and r["method"] == "fasb/paper")
    copa_config = MultiChoiceConfig.from_identity(copa["config"])
    identity = row_identity(model, task="copa", method="fasb/paper", config=copa_config, caa=CAAConfig())
    assert row_key(**identity) == copa["key"]
    mc = next(
        r for r in rows if r["task"] == "truthfulqa-mc" and r["method"] == "fasb/question" and r["fold"] == 1
    )
    records = [SimpleNamespace(id=str(i)) for i in range(817)]
    folds = TruthfulQAFolds(
        EvalContext.create(model, folder),
        records=records,
        config=TruthfulQAConfig.from_identity(mc["config"]),
    )
    assert row_key(**folds.identity("truthfulqa-mc", "fasb/question", fold=1)) == mc["key"]


def test_reproduce_tables_runs_the_variants_on_their_own_subset_without_caa():
    args = argparse.Namespace(
        k=24, alpha=15.0, threshold=0.6, back_steps=10, n_mc=None, n_gen=200, n_items=200, n_pool=300,
        controls=["reversed", "random"], n_random=2, thresholds=["fixed", "calibrated"],
        variant_n_mc=200, variant_n_gen=40, variant_n_items=50, variant_tasks=["truthfulqa", "copa"],
    )  # fmt: skip
    main_plans, variant_plans = reproduce_tables.plans(args), reproduce_tables.variant_plans(args)
    assert all(p.controls == () and p.thresholds == ("fixed",) for p in main_plans)
    assert [p.tasks for p in variant_plans] == [["copa"], ["truthfulqa"], ["truthfulqa"]]
    assert all("caa" not in p.methods and p.controls == ["reversed", "random"] for p in variant_plans)
    assert variant_plans[1].truthfulqa.n_mc == 200 and variant_plans[2].truthfulqa.n_generation == 40
    assert variant_plans[0].multichoice.n_eval == 50 and main_plans[0].multichoice.n_eval == 200
    assert (
        reproduce_tables.variant_plans(
            argparse.Namespace(**{**vars(args), "controls": [], "thresholds": ["fixed"]})
        )
        == []
    )
