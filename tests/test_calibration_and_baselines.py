import json

import numpy as np
import pytest
import torch

from fasb_tl.calibration import calibrate_threshold, check_positions, generation_format_scores
from fasb_tl.cli import main
from fasb_tl.data import DatasetError, load_builtin, probe_bank
from fasb_tl.data.prompts import generation_prompt
from fasb_tl.fitting import control_steerer
from fasb_tl.generation import GenerationConfig, generate
from fasb_tl.scoring import ScoringConfig, answer_tokens, score_choices_many
from fasb_tl.steering import Steerer
from fasb_tl.text_baseline import TextOnlyDetector, answer_texts, detection_metrics


def test_a_separable_case_gives_the_midpoint_threshold_and_clean_rates():
    scores = [0.10, 0.20, 0.30, 0.70, 0.80, 0.90]
    labels = [0, 0, 0, 1, 1, 1]
    calibration = calibrate_threshold(scores, labels)
    assert calibration.threshold == pytest.approx(0.5)
    assert calibration.trigger_rate_false == 1.0 and calibration.trigger_rate_true == 0.0
    assert calibration.balanced_accuracy == 1.0 and (calibration.n_true, calibration.n_false) == (3, 3)


def test_an_overlapping_case_reports_both_trigger_rates():
    scores = [0.1, 0.2, 0.6, 0.4, 0.8, 0.9]  # one false answer scores high, one true answer low
    labels = [0, 0, 0, 1, 1, 1]
    calibration = calibrate_threshold(scores, labels)
    # 0.3 and 0.7 both reach balanced accuracy 5/6; ties go to the lower threshold (fewer triggers).
    assert calibration.threshold == pytest.approx(0.3)
    assert calibration.trigger_rate_false == pytest.approx(2 / 3)
    assert calibration.trigger_rate_true == 0.0


def test_a_target_trigger_rate_is_hit():
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    labels = (rng.random(200) < 0.5).astype(int)
    calibration = calibrate_threshold(scores, labels, criterion="trigger_rate", target_rate=0.25)
    assert (scores < calibration.threshold).mean() == pytest.approx(0.25, abs=0.005)


def test_calibration_rejects_bad_input():
    with pytest.raises(DatasetError, match="true \\(1\\) and false \\(0\\)"):
        calibrate_threshold([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="target_rate"):
        calibrate_threshold([0.1, 0.2], [0, 1], criterion="trigger_rate")
    with pytest.raises(ValueError, match="criterion"):
        calibrate_threshold([0.1, 0.2], [0, 1], criterion="f1")


def test_check_positions_follow_the_decode_loop():
    # Prompt of 10 tokens, answer of 6, back_steps 4: checks after tokens 4..6 read positions 12..14.
    assert check_positions(10, 6, 4) == (12, 15)
    # back_steps beyond the answer: only the check at the end.
    assert check_positions(10, 3, 10) == (11, 12)
    # back_steps 0 checks from the first token on (read at the prompt's last token).
    assert check_positions(10, 2, 0) == (9, 11)


def test_generation_format_scores_equal_the_decode_loops_p_true(tiny_model, steerer):
    records = load_builtin()[:2]
    scores, labels = generation_format_scores(tiny_model, steerer, records, back_steps=2, progress=False)
    assert len(scores) == len(labels) == sum(len(r.answers) for r in records)
    # Teacher-force one answer through the decode loop's monitoring: its lowest checked p_true is the score.
    record = records[0]
    answer, _ = record.answers[0]
    ids, start = answer_tokens(tiny_model, generation_prompt(record.question), "\nA: " + answer)
    traces = []
    for n in range(1, len(ids) - start + 1):
        config = GenerationConfig(method="fasb", threshold=0.0, back_steps=2, max_new_tokens=1)
        result = generate(tiny_model, [ids[: start + n - 1]], steerer, config, progress=False)[0]
        if n >= 2 or n == len(ids) - start:
            traces.append(result.p_true_trace[0])
    assert scores[0] == pytest.approx(min(traces), abs=1e-5)


def test_text_only_detector_finds_planted_words_and_reports_auroc():
    true = [f"It is {w} safe to do." for w in ("perfectly", "entirely", "quite", "very")] * 5
    false = [f"It is {w} dangerous to do." for w in ("extremely", "rather", "quite", "very")] * 5
    detector = TextOnlyDetector().fit(true + false, [1] * 20 + [0] * 20)
    metrics = detector.score(["It is safe.", "It is dangerous."], [1, 0])
    assert metrics == {"accuracy": 1.0, "auroc": 1.0}
    assert detection_metrics([0.2, 0.8, 0.6], [0, 1, 0])["auroc"] == pytest.approx(1.0)
    answers, labels = answer_texts(load_builtin()[:3])
    assert len(answers) == len(labels) and set(labels.tolist()) == {0, 1}
    with pytest.raises(DatasetError, match="both classes"):
        TextOnlyDetector().fit(["a", "b"], [1, 1])


def test_control_steerers_keep_heads_probes_and_sigmas(steerer):
    reversed_ = control_steerer(steerer, "reversed")
    random_ = control_steerer(steerer, "random", seed=3)
    assert torch.equal(reversed_.directions, -steerer.directions)
    assert torch.allclose(random_.directions.norm(dim=-1), torch.ones(steerer.k))
    assert not torch.allclose(random_.directions, steerer.directions)
    assert torch.equal(random_.directions, control_steerer(steerer, "random", seed=3).directions)
    for control in (reversed_, random_):
        assert torch.equal(control.heads, steerer.heads) and torch.equal(control.sigmas, steerer.sigmas)
        assert torch.equal(control.probe_weights, steerer.probe_weights)
    assert reversed_.meta.direction == "reversed-mass_mean" and random_.meta.direction == "random"


def test_a_control_intervention_keeps_the_decisions_and_changes_the_scores(tiny_model, steerer):
    contexts = ["Q: Is the sky blue? A:", "Q: Why? A:"]
    options = [[" yes", " no"], [" because", " no idea"]]
    config = ScoringConfig(method="fixed", threshold=1.0, back_steps=1, alpha=8.0)
    reversed_ = control_steerer(steerer, "reversed")
    scored = score_choices_many(
        tiny_model,
        contexts,
        options,
        steerer,
        {"real": config, "control": config},
        interventions={"control": reversed_},
        progress=False,
    )
    alone = score_choices_many(tiny_model, contexts, options, reversed_, {"x": config}, progress=False)["x"]
    for real, control, direct in zip(scored["real"], scored["control"], alone):
        assert real.strengths == control.strengths
        assert torch.allclose(control.scores, direct.scores, atol=1e-4)
        assert not torch.allclose(real.scores, control.scores)


def test_probe_bank_in_the_generation_format():
    record = load_builtin()[0]
    qa = probe_bank([record])
    generation = probe_bank([record], "generation")
    answer = record.answers[0][0]
    assert qa.prompts[0] == f"Q: {record.question} A: {answer}"
    assert generation.prompts[0] == generation_prompt(record.question) + "\nA: " + answer
    assert qa.labels.tolist() == generation.labels.tolist()
    with pytest.raises(DatasetError, match="probe_format"):
        probe_bank([record], "chat")


def test_fasb_fit_calibrates_and_stores_the_threshold(tmp_path, capsys):
    out = tmp_path / "steerer"
    args = [
        "fit",
        "--model",
        "tiny-random-llama",
        "--k",
        "4",
        "--out",
        str(out),
        "--calibrate",
        "--back-steps",
        "3",
    ]
    assert main(args) == 0
    stored = json.loads((out / "calibration-back3.json").read_text())
    assert 0.0 <= stored["threshold"] <= 1.0 and stored["n_true"] > 0 and stored["n_false"] > 0
    assert f"calibrated threshold {stored['threshold']:.3f}" in capsys.readouterr().out
    assert Steerer.load(out).k == 4
