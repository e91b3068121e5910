"""Reliability of what the evaluation reuses and reports: model identity of Steerers and cached artifacts,
tables that never average different configs or models, and command-line values refused before any work."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch

import fasb_tl.demo
import fasb_tl.models
from fasb_tl._io import folder_lock
from fasb_tl.caa import CAAConfig
from fasb_tl.cli import _config, build_parser, main
from fasb_tl.demo import DemoConfig
from fasb_tl.evaluation.artifacts import load_steerer_if_valid
from fasb_tl.evaluation.context import EvalContext
from fasb_tl.evaluation.multichoice import MultiChoiceConfig, run_multichoice
from fasb_tl.evaluation.results import ResultStore
from fasb_tl.evaluation.runner import EvalPlan, run_plan, sweep_plans
from fasb_tl.evaluation.tables import (
    Column,
    config_sections,
    multichoice_table,
    truthfulqa_table,
    uncertainty_table,
)
from fasb_tl.evaluation.truthfulqa import TruthfulQAConfig
from fasb_tl.generation import GenerationConfig, generate
from fasb_tl.models import evenly_spaced, load_model, model_name, weights_fingerprint
from fasb_tl.steering import ModelMismatchError, Steerer

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small six-task run on the tiny model, as options.
TINY_COPA = "--model tiny-random-llama --task copa --n-items 6 --n-pool 10"
COMMITTED_STEERER = os.path.join(
    REPOSITORY, "results", "smollm2-135m-instruct", "steerers", "fold0-mass_mean-k24"
)


def tiny_llama_of_seed(folder, seed: int):
    """A tiny random Llama of the test model's shape and tokenizer, with weights drawn from ``seed``."""
    import transformers

    vocab, tokenizer = fasb_tl.models._tiny_tokenizer()
    config, class_name = fasb_tl.models._tiny_config("llama", vocab)
    config.architectures = [class_name]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        getattr(transformers, class_name)(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_model(str(folder))


@pytest.fixture(scope="module")
def other_llama(tmp_path_factory):
    """Same shape as ``tiny_model``, other weights (seed 1), loaded from a folder under another name."""
    return tiny_llama_of_seed(tmp_path_factory.mktemp("seed1-llama"), seed=1)


# -- 2. model identity --------------------------------------------------------------------------------------


def test_the_weights_fingerprint_is_stable_across_loads_and_tells_weights_apart(tiny_model, other_llama):
    again = load_model("tiny-random-llama")
    assert again is not tiny_model and weights_fingerprint(again) == weights_fingerprint(tiny_model)
    assert weights_fingerprint(load_model("tiny-random-llama", dtype="bfloat16")) == weights_fingerprint(
        again
    )
    others = [other_llama, *(load_model(f"tiny-random-{a}") for a in ("gpt2", "mistral", "qwen2"))]
    prints = {weights_fingerprint(model) for model in [tiny_model, *others]}
    assert len(prints) == 5 and all(len(p) == 16 for p in prints)


def test_a_fingerprint_is_computed_once_per_model(tiny_model, monkeypatch):
    first = weights_fingerprint(tiny_model)
    monkeypatch.setattr(torch, "linspace", lambda *a, **k: pytest.fail("fingerprint recomputed"))
    assert weights_fingerprint(tiny_model) == first


def test_a_fitted_steerer_records_its_model_and_older_files_still_load(steerer, tiny_model, tmp_path):
    assert steerer.meta.model_fingerprint == weights_fingerprint(tiny_model)
    folder = steerer.save(tmp_path / "s")
    meta = json.loads((folder / "steerer.json").read_text())
    assert meta["model_fingerprint"] == weights_fingerprint(tiny_model)
    del meta["model_fingerprint"]  # as written before the field existed
    (folder / "steerer.json").write_text(json.dumps(meta))
    old = Steerer.load(folder, model=tiny_model)
    assert old.meta.model_fingerprint is None
    # The committed Steerers (no fingerprint) still load and fit their own model (name and shape).
    committed = Steerer.load(COMMITTED_STEERER)
    assert committed.meta.model_fingerprint is None
    own = type("Bridge", (), {"cfg": type("Cfg", (), {"model_name": committed.meta.model_name})})()
    own.cfg.n_layers, own.cfg.n_heads, own.cfg.d_head = 30, 9, 64
    committed.check_model(own)
    own.cfg.model_name = "HuggingFaceTB/SmolLM2-360M-Instruct"
    with pytest.raises(ModelMismatchError, match="SmolLM2-360M"):
        committed.check_model(own)


def test_a_steerer_is_refused_on_another_model_of_its_shape_unless_allowed(steerer, other_llama, tmp_path):
    with pytest.raises(ModelMismatchError, match="allow_other_model=True"):
        steerer.check_model(other_llama)
    folder = steerer.save(tmp_path / "s")
    with pytest.raises(ModelMismatchError, match="tiny-random-llama"):
        Steerer.load(folder, model=other_llama)
    # Same name, other weights: the fingerprint tells them apart.
    renamed = replace(steerer, meta=replace(steerer.meta, model_name=model_name(other_llama)))
    with pytest.raises(ModelMismatchError, match=weights_fingerprint(other_llama)):
        renamed.check_model(other_llama)
    # Allowed once, the model accepts Steerers of that origin from then on (copies too).
    fresh = load_model(model_name(other_llama))  # a copy, so other tests see no accepted origin
    loaded = Steerer.load(folder)
    loaded.check_model(fresh, allow_other_model=True)
    config = GenerationConfig(method="fasb", max_new_tokens=3, back_steps=1)
    [result] = generate(fresh, ["Q: Is it? A:"], loaded.to("cpu"), config, progress=False)
    assert len(result.token_ids) == 3
    with pytest.raises(ModelMismatchError):
        renamed.check_model(fresh)  # another origin is still refused
    with pytest.raises(ModelMismatchError):
        steerer.check_model(other_llama)  # and other model objects accept nothing


def test_a_result_folder_shared_by_two_models_keeps_each_models_steerer(
    tiny_model, other_llama, tmp_path, data_dir
):
    config = MultiChoiceConfig(n_pool=12, n_eval=6, k=4, alpha=5.0)
    for model in (tiny_model, other_llama):
        ctx = EvalContext.create(model, tmp_path, data_dir=str(data_dir), progress=False)
        run_multichoice(ctx, task="copa", config=config, methods=("none", "fasb"), protocols=("question",))
    folders = sorted((tmp_path / "steerers").iterdir())
    assert len(folders) == 2 and all(f.name.startswith("copa-mass_mean-k4-pool12-") for f in folders)
    fitted_on = {Steerer.load(f).meta.model_fingerprint for f in folders}
    assert fitted_on == {weights_fingerprint(tiny_model), weights_fingerprint(other_llama)}
    rows = ResultStore(tmp_path).rows
    assert {r["model"] for r in rows} == {model_name(tiny_model), model_name(other_llama)}
    # Another fitting setting is another Steerer too; steering settings (alpha) share one.
    for changed in (replace(config, val_fraction=0.25), replace(config, alpha=1.0)):
        ctx = EvalContext.create(tiny_model, tmp_path, data_dir=str(data_dir), progress=False)
        run_multichoice(ctx, task="copa", config=changed, methods=("fasb",), protocols=("question",))
    assert len(list((tmp_path / "steerers").iterdir())) == 3


def test_a_stored_steerer_of_another_model_is_not_reused(steerer, tiny_model, other_llama, tmp_path):
    folder = steerer.save(tmp_path / "s")
    assert load_steerer_if_valid(folder, tiny_model) is not None
    assert load_steerer_if_valid(folder, other_llama) is None  # refitted by the cache


# -- 3. tables per config and model -------------------------------------------------------------------------


def rows_of(alpha: float, accuracy: float, model: str = "m", caa: float | None = None) -> list[dict]:
    base = {"model": model, "config": {"alpha": alpha, "k": 4}}
    rows = [
        {**base, "task": "copa", "method": "iti", "accuracy": accuracy, "per_item": {"correct": [accuracy]}},
        {**base, "task": "truthfulqa-mc", "method": "iti", "mc1": accuracy, "mc2": accuracy, "fold": 0},
    ]
    if caa is not None:
        rows.append({**base, "task": "copa", "method": "caa", "accuracy": caa, "caa": {"multiplier": caa}})
    for row in rows:
        row["item_ids"] = ["a"]
    return rows


def test_tables_keep_runs_of_different_alpha_apart():
    rows = rows_of(5.0, 0.2) + rows_of(10.0, 0.8)
    six = multichoice_table(rows)
    assert six.loc["iti [alpha=5.0]", "copa"] == pytest.approx(20.0)
    assert six.loc["iti [alpha=10.0]", "copa"] == pytest.approx(80.0)
    assert "iti" not in six.index
    tqa = truthfulqa_table(rows)
    assert list(tqa.index) == ["iti [alpha=5.0]", "iti [alpha=10.0]"]
    assert tqa.loc["iti [alpha=10.0]", "MC2 (paper)"] == pytest.approx(80.0)
    frame = uncertainty_table(rows, {"copa": Column("copa", ("correct",), "paper")})
    assert frame.loc["iti [alpha=5.0]", "copa"].startswith("20.0")
    # One config: the plain labels, as before.
    assert list(multichoice_table(rows_of(5.0, 0.2)).index) == ["iti"]


def test_table_sections_are_labelled_by_what_differs_and_caa_configs_stay_apart():
    rows = rows_of(5.0, 0.2, caa=1.0) + rows_of(5.0, 0.2, caa=2.0) + rows_of(5.0, 0.6, model="other")
    labels = [label for label, _ in config_sections(rows, ["copa"])]
    assert labels == [
        "model=m, caa.multiplier=1.0",
        "model=m, caa.multiplier=2.0",
        "model=other, caa.multiplier=-",
    ]
    six = multichoice_table(rows)
    assert six.loc["caa [model=m, caa.multiplier=2.0]", "copa"] == pytest.approx(200.0)
    # The config's other rows join each of its CAA sections.
    assert six.loc["iti [model=m, caa.multiplier=2.0]", "copa"] == pytest.approx(20.0)
    assert six.loc["iti [model=other, caa.multiplier=-]", "copa"] == pytest.approx(60.0)


def test_two_eval_runs_of_different_alpha_print_separate_rows(tmp_path, data_dir, capsys):
    args = ["eval", *TINY_COPA.split(), "--methods", "none,iti", "--k", "4", "--data-dir", str(data_dir)]
    args += ["--out", str(tmp_path)]
    assert main([*args, "--alpha", "1"]) == 0
    capsys.readouterr()
    assert main([*args, "--alpha", "5"]) == 0
    printed = capsys.readouterr().out
    assert "| iti [alpha=1.0] |" in printed and "| iti [alpha=5.0] |" in printed
    assert len(list((tmp_path / "steerers").iterdir())) == 1  # alpha does not refit


# -- 10. command-line values refused before any work --------------------------------------------------------


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command loads a model."""

    def refuse(*args, **kwargs):
        pytest.fail("a model was loaded before the bad value was refused")

    monkeypatch.setattr(fasb_tl.models, "load_model", refuse)
    monkeypatch.setattr(fasb_tl.demo, "load_model", refuse)


BAD_VALUES = [
    (["eval", "--task", ""], "--task"),
    (["eval", "--task", "copa,gsm8k"], "--task"),
    (["eval", "--methods", ","], "--methods"),
    (["eval", "--methods", "fasbb"], "--methods"),
    (["eval", "--protocols", ","], "--protocols"),
    (["eval", "--judges", "bleu"], "--judges"),
    (["eval", "--controls", "sideways"], "--controls"),
    (["eval", "--thresholds", "adaptive"], "--thresholds"),
    (["eval", "--n-items", "0"], "--n-items"),
    (["eval", "--n-gen", "-5"], "--n-gen"),
    (["eval", "--n-mc", "0"], "--n-mc"),
    (["eval", "--n-pool", "0"], "--n-pool"),
    (["eval", "--n-pool", "1"], "--n-pool"),
    (["eval", "--n-random", "0"], "--n-random"),
    (["eval", "--model", ""], "--model"),
    (["eval", "--k", "0"], "--k"),
    (["eval", "--alpha", "nan"], "--alpha"),
    (["eval", "--alpha", "-1"], "--alpha"),
    (["eval", "--threshold", "1.5"], "--threshold"),
    (["eval", "--back-steps", "-1"], "--back-steps"),
    (["eval", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["eval", "--caa-multiplier", "-1"], "--caa-multiplier"),
    (["eval", "--caa-layer", "-1"], "--caa-layer"),
    (["eval", "--dtype", "float8"], "--dtype"),
    (["eval", "--task", "truthfulqa", "--no-mc", "--no-generation"], "--no-mc"),
    (["sweep", "--grid-threshold", "0.5,2"], "--grid-threshold"),
    (["sweep", "--grid-alpha", "1,abc"], "--grid-alpha"),
    (["sweep", "--grid-alpha", ","], "--grid-alpha"),
    (["sweep", "--grid-k", "4,0"], "--grid-k"),
    (["sweep", "--grid-back-steps", "1.5"], "--grid-back-steps"),
    (["demo", "--k", "0"], "--k"),
    (["demo", "--model", ""], "--model"),
    (["bench", "--repeats", "0"], "--repeats"),
    (["fit", "--batch-size", "0"], "--batch-size"),
]


@pytest.mark.parametrize(("argv", "flag"), BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_a_bad_value_is_refused_before_any_work_naming_its_option(argv, flag, no_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--out", str(tmp_path / "out")])
    errors = capsys.readouterr().err.strip().splitlines()
    message = errors[-1] if stop.value.code == 2 else str(stop.value.code)  # argparse's line, or ours
    assert stop.value.code != 0 and flag in message
    assert "alpha" not in message or "alpha" in flag  # the CAA multiplier is not reported as alpha
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["eval", "sweep", "demo", "bench", "fit"])
def test_an_unusable_out_folder_is_refused_before_any_work(command, no_model, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: check what an unprivileged user would be told
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: real(p, m) and os.stat(p).st_mode & 0o200 != 0)
    for out in (a_file, a_file / "sub", locked, locked / "new"):
        with pytest.raises(SystemExit) as stop:
            main([command, "--out", str(out)])
        assert stop.value.code != 0 and "--out" in capsys.readouterr().err
    locked.chmod(0o755)


def test_settings_that_do_not_fit_the_model_stop_before_any_row(tmp_path, data_dir, capsys):
    common = [*TINY_COPA.split(), "--methods", "none,caa", "--data-dir", str(data_dir)]
    common += ["--out", str(tmp_path)]
    cases = [
        (["eval", "--k", "4", "--caa-layer", "99"], "--caa-layer", "[0, 1]"),
        (["eval", "--k", "24"], "--k", "n_layers x n_heads = 8"),
        (["sweep", "--k", "4", "--grid-k", "4,99"], "--grid-k", "got 99"),
    ]
    for argv, flag, expected in cases:
        with pytest.raises(SystemExit) as stop:
            main([*argv, *common])
        assert flag in str(stop.value.code) and expected in str(stop.value.code)
        assert not (tmp_path / "results.jsonl").exists()


def test_the_demo_takes_k_and_names_it_when_the_model_has_fewer_heads(tmp_path):
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--model", "tiny-random-llama", "--out", str(tmp_path)])
    assert "--k" in str(stop.value.code) and "= 8, got 24" in str(stop.value.code)
    args = build_parser().parse_args(["demo", "--model", "tiny-random-llama", "--k", "4"])
    assert _config(DemoConfig, args).k == 4  # run_demo with it: tests/test_scoring_and_demo.py


def test_the_library_checks_every_grid_point_and_setting_before_running(tiny_model, tmp_path):
    plan = EvalPlan(tasks=["copa"], methods=["fasb"])
    with pytest.raises(ValueError, match="threshold must be in"):
        sweep_plans(plan, {"threshold": [0.5, 2.0]})
    with pytest.raises(ValueError, match="multiplier"):
        CAAConfig(multiplier=-1)
    with pytest.raises(ValueError, match="n_generation"):
        TruthfulQAConfig(n_generation=-5)
    with pytest.raises(ValueError, match="n_pool"):
        MultiChoiceConfig(n_pool=0)
    for empty in ({"tasks": []}, {"methods": []}, {"protocols": []}):
        with pytest.raises(ValueError):
            EvalPlan(**{"tasks": ["copa"], "methods": ["fasb"], **empty})
    too_many = EvalPlan(tasks=["copa"], methods=["none", "fasb"], multichoice=MultiChoiceConfig(k=9))
    with pytest.raises(ValueError, match="k: expected K <= n_layers x n_heads = 8"):
        run_plan(tiny_model, too_many, tmp_path, progress=False)
    assert not (tmp_path / "results.jsonl").exists()


@pytest.mark.parametrize("command", ["eval", "sweep"])
def test_a_held_result_folder_stops_the_command_before_the_model_loads(command, no_model, tmp_path):
    out = tmp_path / "out"
    extra = ["--grid-alpha", "1,2"] if command == "sweep" else []
    with folder_lock(out), pytest.raises(SystemExit) as stop:
        main([command, "--task", "copa", "--methods", "none", *extra, "--out", str(out)])
    assert str(stop.value.code).startswith(f"fasb {command}: error: {out} is in use by another process (pid ")


def test_the_fingerprint_samples_inside_a_parameter_as_large_as_an_embedding():
    # 49152 x 576 is SmolLM2's embedding: a float32 linspace to n - 1 rounds to n there and indexed past the end.
    n = 49152 * 576
    index = evenly_spaced(n, 64)
    assert index[0] == 0 and index[-1] == n - 1 and bool((index[1:] > index[:-1]).all())
    assert int(torch.linspace(0, n - 1, 64)[-1].long()) == n  # the rounding the integer version avoids
