import sys
import time
from pathlib import Path

import pytest
import torch

from fasb_tl.bench import PeakRSS, Stage
from fasb_tl.generation import GenerationConfig, generate
from fasb_tl.models import encode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))
from released_loop import released_generate


def test_stage_reports_the_median_time_per_unit():
    stage = Stage("x", seconds=[1.0, 2.0, 9.0], units=[10, 10, 10])
    assert stage.seconds_per_unit == pytest.approx(0.2)


def test_peak_rss_sees_a_large_allocation():
    with PeakRSS() as memory:
        before = PeakRSS.current_mb()
        block = torch.ones(64 * 1024 * 1024, dtype=torch.float32)  # 256 MB
        block += 1
        # The sampler reads RSS every 50 ms; on a loaded machine a shorter-lived block can fall between reads.
        time.sleep(0.5)
        del block
    assert memory.peak >= before + 200


@pytest.mark.parametrize("threshold", [0.0, 0.5, 2.0])
def test_released_loop_reimplementation_matches_the_cached_loop(tiny_model, steerer, threshold):
    prompt = "Q: Is the sky blue? A:"
    config = GenerationConfig(
        alpha=8.0,
        threshold=threshold,
        back_steps=3,
        max_new_tokens=10,
        stop_at_eos=False,
        force_threshold=True,
    )
    ours = generate(tiny_model, [prompt], steerer, config, progress=False)[0]
    theirs = released_generate(tiny_model, steerer, encode(tiny_model, prompt), 8.0, threshold, 3, 10)
    assert ours.token_ids == theirs


def test_bench_runs_every_stage_and_derives_each_ratio_from_its_stages(tmp_path):
    import json

    from fasb_tl.bench import RATIOS, BenchConfig, run_bench

    config = BenchConfig(model="tiny-random-llama", n_prompts=2, max_new_tokens=6, back_steps=2, k=4)
    report = run_bench(config, tmp_path)
    written = json.loads((tmp_path / "bench.json").read_text())
    stages = written["stages"]
    expected = {name for pair in RATIOS.values() for name in pair} - {"e_released_loop"}
    assert expected <= set(stages)
    for label, (num, den) in RATIOS.items():
        if num in stages:
            ratio = stages[num]["median_seconds_per_unit"] / stages[den]["median_seconds_per_unit"]
            assert written["ratios"][label] == pytest.approx(ratio)
    assert stages["f_fit_torch"]["mean_abs_val_acc_diff"] <= 0.01
    assert stages["f_fit_torch"]["n_train_prompts"] > 0
    assert all(stage["peak_rss_mb"] > 0 for stage in stages.values())
    assert stages["f_fit_sklearn"]["items"] == stages["g_bank_extract_batch16"]["items"] == config.repeats
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        BenchConfig(repeats=0)
    assert report["ratios"] == written["ratios"]
