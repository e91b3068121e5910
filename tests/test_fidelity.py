"""Fidelity to the released code: the random-heads control (``--use_random_dir`` with ``--use_center_of_mass``)
and the tie rule's place in result keys (the rule itself is tested in ``test_probes.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fasb_tl.directions import head_directions, projection_std
from fasb_tl.evaluation.multichoice import MultiChoiceConfig
from fasb_tl.evaluation.results import ResultStore
from fasb_tl.evaluation.runner import EvalPlan, run_plan
from fasb_tl.evaluation.truthfulqa import TruthfulQAConfig
from fasb_tl.evaluation.variants import Variant, plan_variants
from fasb_tl.fitting import checked_heads, random_heads, steerer_from_activations
from fasb_tl.probes import ProbeError
from fasb_tl.steering import Steerer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_plan_golden import small_data_dir


def run_tiny_plan(model, plan: EvalPlan, data_dir: Path, tmp_path: Path) -> Path:
    """Run ``plan`` on the small TruthfulQA of the golden test (and COPA) into ``tmp_path/out``."""
    out = tmp_path / "out"
    run_plan(model, plan, out, data_dir=small_data_dir(model, data_dir, tmp_path / "data"), progress=False)
    return out


def test_random_heads_are_distinct_inside_the_grid_and_seeded():
    heads = random_heads(30, 9, 24, seed=3)
    assert heads.shape == (24, 2) and len({tuple(h) for h in heads.tolist()}) == 24
    assert bool((heads[:, 0] < 30).all() and (heads[:, 1] < 9).all() and (heads >= 0).all())
    assert torch.equal(heads, random_heads(30, 9, 24, seed=3))
    assert not torch.equal(heads, random_heads(30, 9, 24, seed=4))
    assert len({tuple(h) for h in random_heads(2, 4, 8, seed=0).tolist()}) == 8


@pytest.fixture(scope="module")
def planted():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 2
    acts = torch.randn(60, 3, 4, 8, generator=generator)
    acts[:, 1, 2, 0] += 3.0 * labels  # one head that separates
    tuning = torch.randn(40, 3, 4, 8, generator=generator)
    return acts, labels, tuning


def fit(planted, **kwargs) -> Steerer:
    acts, labels, tuning = planted
    meta = model_meta_for(3, 4, 8)
    return steerer_from_activations(
        acts[:40], labels[:40], acts[40:], labels[40:], tuning, meta, k=3, progress=False, **kwargs
    )


def model_meta_for(n_layers: int, n_heads: int, d_head: int):
    from fasb_tl.steering import SteererMeta

    return SteererMeta("toy", n_layers, n_heads, d_head, "mass_mean")


def test_given_heads_replace_the_top_k_and_keep_their_own_probes_directions_and_sigmas(planted):
    acts, labels, tuning = planted
    top = fit(planted)
    assert torch.equal(fit(planted, heads=top.heads).tensors()["directions"], top.directions)
    chosen = torch.tensor([[0, 0], [2, 3], [1, 1]])
    steerer = fit(planted, heads=chosen)
    layer, head = chosen[:, 0], chosen[:, 1]
    assert torch.equal(steerer.heads, chosen)
    torch.testing.assert_close(steerer.probe_weights, steerer.fit_report.coef_[layer, head])
    expected = head_directions("mass_mean", acts[:, layer, head], labels, steerer.probe_weights)
    torch.testing.assert_close(steerer.directions, expected)
    torch.testing.assert_close(steerer.sigmas, projection_std(tuning[:, layer, head], expected))


@pytest.mark.parametrize(
    ("heads", "match"),
    [
        (torch.tensor([[0, 0], [0, 0]]), "distinct"),
        (torch.tensor([[3, 0]]), r"outside the model's 3 x 4 grid"),
        (torch.tensor([[0, -1]]), "outside"),
        (torch.tensor([0, 1]), r"\[k, 2\]"),
    ],
)
def test_bad_heads_are_refused_naming_them(heads, match):
    with pytest.raises(ProbeError, match=match):
        checked_heads(heads, 3, 4)


def test_the_random_heads_control_is_seeded_like_the_random_direction():
    variants = plan_variants(["random_heads"], n_random=2)
    assert [v.identity() for v in variants[1:]] == [
        {"control": "random_heads", "control_seed": 0},
        {"control": "random_heads", "control_seed": 1},
    ]
    assert variants[2].suffix() == "~random_heads1" and variants[2].changes_heads
    assert not Variant(control="random").changes_heads
    with pytest.raises(ValueError, match="random_heads"):
        plan_variants(["random_head"])


def test_the_tie_rule_keys_rows_except_at_its_legacy_value():
    released, lowest = MultiChoiceConfig(), MultiChoiceConfig(tie_break="lowest")
    assert released.identity()["tie_break"] == "released"
    assert "tie_break" not in lowest.identity()
    assert MultiChoiceConfig.from_identity(lowest.identity()) == lowest
    assert MultiChoiceConfig.from_identity(released.identity()) == released
    with pytest.raises(ValueError, match="tie_break must be one of"):
        MultiChoiceConfig(tie_break="first")


def test_a_plan_with_the_random_heads_control_steers_and_gates_with_random_heads(
    tiny_model, data_dir, tmp_path
):
    plan = EvalPlan(
        tasks=["truthfulqa", "copa"],
        methods=["none", "fasb"],
        truthfulqa=TruthfulQAConfig(k=4, alpha=5.0, back_steps=2, max_new_tokens=4, n_mc=4, n_generation=2),
        multichoice=MultiChoiceConfig(n_pool=12, n_eval=6, k=4, alpha=5.0),
        controls=["random_heads"],
        n_random=1,
    )
    out = run_tiny_plan(tiny_model, plan, data_dir, tmp_path)
    rows = ResultStore(out).rows
    controlled = [r for r in rows if r.get("control") == "random_heads"]
    assert {r["task"] for r in controlled} == {"truthfulqa-mc", "truthfulqa-gen", "copa"}
    assert all(r["control_seed"] == 0 and r["method"].startswith("fasb") for r in controlled)
    expected = random_heads(int(tiny_model.cfg.n_layers), int(tiny_model.cfg.n_heads), 4, seed=0)
    folders = sorted(p for p in (out / "steerers").iterdir() if "random_heads0" in p.name)
    assert len(folders) == 3  # two TruthfulQA folds and COPA
    for folder in folders:
        assert torch.equal(Steerer.load(folder).heads, expected)
    plain = {(r["task"], r["method"], r.get("fold")): r for r in rows if "control" not in r}
    assert any(
        r.get("steered_fraction") != plain[(r["task"], r["method"], r.get("fold"))].get("steered_fraction")
        for r in controlled
        if r["task"] != "truthfulqa-gen"
    )


def steered_log_probs(
    model, steerer, full: list[int], first_steered: int | None, alpha: float
) -> torch.Tensor:
    """Each token's log-probability with steering (strength 1) from position ``first_steered`` on."""
    from fasb_tl.intervention import SteeringScale

    ids = torch.tensor([full])
    mask = torch.zeros(1, len(full))
    if first_steered is not None:
        mask[0, first_steered:] = alpha
    with torch.no_grad(), steerer.attach(model, SteeringScale(mask)):
        logits = model(ids).double()
    return logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]


@pytest.mark.parametrize(("answer", "back_steps", "short"), [(" one two three", 2, False), (" no", 5, True)])
def test_the_paper_protocol_steers_the_answer_tokens_after_the_kept_ones(
    tiny_model, steerer, answer, back_steps, short
):
    """A trigger at the first check keeps ``n - back_steps`` answer tokens unsteered: the first check comes after
    ``back_steps + 1`` tokens, so the first answer token's score is steered only in answers of at most
    ``back_steps`` tokens (README: Scoring protocols)."""
    from fasb_tl.scoring import ScoringConfig, answer_tokens, score_choices

    context, alpha = "Q: Is the sky blue?\nA:", 8.0
    full, start = answer_tokens(tiny_model, context, answer)
    m = len(full) - start
    assert (m <= back_steps) == short
    config = ScoringConfig(
        method="fixed", alpha=alpha, back_steps=back_steps, threshold=2.0, force_threshold=True
    )
    (got,) = score_choices(tiny_model, [context], [[answer]], steerer, config, progress=False)
    n = back_steps + 1 if m > back_steps else m  # the first check: it triggers, the threshold being above 1
    kept = max(n - back_steps, 0)
    by_hand = steered_log_probs(tiny_model, steerer, full, start - 1 + kept, alpha)
    plain = steered_log_probs(tiny_model, steerer, full, None, alpha)
    answer_positions = slice(start - 1, len(full) - 1)
    assert float(got.scores[0]) == pytest.approx(float(by_hand[answer_positions].sum()), abs=1e-4)
    first_token_steered = not torch.isclose(by_hand[start - 1], plain[start - 1], atol=1e-6)
    assert first_token_steered == short


def test_iti_generates_with_its_own_cached_history_and_the_fasb_methods_with_the_released_loop(
    tiny_model, data_dir, tmp_path, monkeypatch
):
    import fasb_tl.evaluation.truthfulqa_generation as generation_job

    used = {}
    real = generation_job.generate

    def recording(model, prompts, steerer, config, **kwargs):
        used[config.method] = config.history
        return real(model, prompts, steerer, config, **kwargs)

    monkeypatch.setattr(generation_job, "generate", recording)
    plan = EvalPlan(
        tasks=["truthfulqa"],
        methods=["iti", "fasb"],
        truthfulqa=TruthfulQAConfig(k=4, alpha=5.0, back_steps=2, max_new_tokens=3, n_mc=2, n_generation=2),
        mc=False,
    )
    out = run_tiny_plan(tiny_model, plan, data_dir, tmp_path)
    assert used == {"iti": "persistent", "fasb": "reference"}
    from fasb_tl.evaluation.tables import generation_histories

    note = generation_histories(ResultStore(out).rows)
    assert note == "Generation history: persistent (iti); reference (fasb)"


def test_iti_history_stays_out_of_keys_at_its_legacy_value():
    legacy = TruthfulQAConfig(iti_history="reference")
    assert (
        "iti_history" not in legacy.identity()
        and TruthfulQAConfig().identity()["iti_history"] == "persistent"
    )
    assert TruthfulQAConfig.from_identity(legacy.identity()) == legacy
    assert (
        TruthfulQAConfig().history_of("iti") == "persistent"
        and TruthfulQAConfig().history_of("fasb") == "reference"
    )
    with pytest.raises(ValueError, match="iti_history must be one of"):
        TruthfulQAConfig(iti_history="cached")


def test_a_steerer_records_how_its_heads_were_chosen(planted, tmp_path):
    assert fit(planted).meta.head_selection == "released"
    assert fit(planted, tie_break="lowest").meta.head_selection == "lowest"
    given = fit(planted, heads=torch.tensor([[0, 1]]))
    assert given.meta.head_selection == "given"
    assert Steerer.load(given.save(tmp_path / "given")).meta.head_selection == "given"
