"""Running at scale: dtype / device_map passthrough and data-parallel evaluation over torch.distributed (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from fasb_tl.data import load_truthfulqa
from fasb_tl.distributed import Shard, sharded_map
from fasb_tl.evaluation.context import EvalContext
from fasb_tl.evaluation.results import ResultStore
from fasb_tl.evaluation.truthfulqa import TruthfulQAConfig, TruthfulQAFolds, run_mc
from fasb_tl.evaluation.truthfulqa_generation import run_generation
from fasb_tl.evaluation.variants import plan_variants
from fasb_tl.generation import GenerationConfig, generate
from fasb_tl.models import encode, load_model
from fasb_tl.scoring import ScoringConfig, score_choices

TINY_TQA = TruthfulQAConfig(
    k=4,
    alpha=5.0,
    back_steps=2,
    max_new_tokens=4,
    n_mc=8,
    n_generation=6,
    batch_size=2,
    generation_batch_size=2,
)
VARIANTS = plan_variants(["reversed"], thresholds=["fixed", "calibrated"])
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def comparable(rows: list[dict]) -> dict[str, dict]:
    return {r["key"]: {k: v for k, v in r.items() if k != "seconds"} for r in rows}


def test_shard_batches_split_whole_batches_round_robin():
    assert Shard(0, 2).batches(7, 2) == [range(2), range(4, 6)]
    assert Shard(1, 2).batches(7, 2) == [range(2, 4), range(6, 7)]
    assert Shard().batches(3, 2) == [range(2), range(2, 3)]
    assert sharded_map(Shard(), [1, 2, 3], 2, lambda xs: [x * 10 for x in xs]) == [10, 20, 30]
    with pytest.raises(ValueError, match="rank"):
        Shard(2, 2)


def test_bfloat16_model_steers_and_scores_in_its_own_dtype(steerer):
    model = load_model("tiny-random-llama", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    seen = []
    hook = ("blocks.0.attn.hook_z", lambda z, hook: seen.append(z.dtype))
    config = GenerationConfig(method="fasb", threshold=1.0, back_steps=1, max_new_tokens=4, alpha=5.0)
    with model.hooks(fwd_hooks=[hook]):
        steered = generate(model, ["Q: Is it? A:", "Q: Why? A:"], steerer, config, progress=False)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(r.triggered and len(r.token_ids) == 4 for r in steered)
    plain = generate(
        model, ["Q: Is it? A:"], None, GenerationConfig(method="none", max_new_tokens=4), progress=False
    )
    zero = generate(
        model, ["Q: Is it? A:"], steerer, GenerationConfig(alpha=0.0, max_new_tokens=4), progress=False
    )
    assert zero[0].token_ids == plain[0].token_ids
    scores = score_choices(
        model, ["Q: Is it? A:"], [[" yes", " no"]], steerer, ScoringConfig(), progress=False
    )
    assert scores[0].scores.dtype == torch.float64 and torch.isfinite(scores[0].scores).all()
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model("tiny-random-llama", dtype="float8")


def test_device_map_reaches_transformers_and_the_placed_model_matches(tiny_model, monkeypatch):
    import transformers

    original = transformers.AutoModelForCausalLM.from_pretrained.__func__
    placements = []

    def recording(cls, *args, **kwargs):
        placements.append(kwargs.get("device_map"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(recording))
    layers = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu"}
    device_map = {**layers, "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    placed = load_model("tiny-random-llama", device_map=device_map)
    assert placements == [device_map]
    assert str(placed.cfg.device) == "cpu"
    ids = torch.tensor([encode(tiny_model, "Q: x A: y")])
    assert torch.allclose(placed(ids), tiny_model(ids), atol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        load_model("tiny-random-llama", device="cpu", device_map="auto")


def run_tqa(folds: TruthfulQAFolds) -> None:
    run_mc(folds, methods=("none", "iti", "fasb"), variants=VARIANTS)
    run_generation(folds, methods=("none", "fasb"), variants=VARIANTS)


def _tqa_rank(rank: int, world_size: int, rendezvous: str, out: str, data_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world_size)
    try:
        model = load_model("tiny-random-llama")
        records = load_truthfulqa(data_dir)[:40]
        ctx = EvalContext.create(model, out, progress=False)
        assert ctx.shard == Shard(rank, world_size)
        run_tqa(TruthfulQAFolds(ctx, records=records, config=TINY_TQA))
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_give_the_single_process_rows(tiny_model, data_dir, tmp_path):
    ctx = EvalContext.create(tiny_model, tmp_path / "one", progress=False)
    run_tqa(TruthfulQAFolds(ctx, records=load_truthfulqa(data_dir)[:40], config=TINY_TQA))
    rendezvous = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(
        _tqa_rank, args=(2, rendezvous, str(tmp_path / "two"), str(data_dir)), nprocs=2, start_method="spawn"
    )
    one, two = ResultStore(tmp_path / "one").rows, ResultStore(tmp_path / "two").rows
    # MC: none, iti, fasb/paper, fasb/question; + reversed iti and fasb x 2; + calibrated fasb x 2. Generation:
    # none, fasb, reversed fasb, calibrated fasb. Per fold.
    assert len(one) == len(two) == 2 * (4 + 3 + 2 + 4)
    assert comparable(two) == comparable(one)
    for name in ("fasb-fold0.csv", "fasb~reversed-fold1.csv", "fasb~calibrated-fold1.csv"):
        assert (tmp_path / "two" / "answers" / name).read_text() == (
            tmp_path / "one" / "answers" / name
        ).read_text()
    assert not any((tmp_path / "two" / "shards").glob("*/*"))


# Rank 1 SIGKILLs itself right after saving its first shard file; torchrun then stops the job.
KILL_RANK_ONE = """
import os, signal, sys
import fasb_tl.distributed as distributed
from fasb_tl.cli import main

real_write = distributed.atomic_write_text

def write_then_die(path, text):
    real_write(path, text)
    if os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGKILL)

distributed.atomic_write_text = write_then_die
sys.exit(main(sys.argv[1:]))
"""


def torchrun(script: list[str], args: list[str]) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        *script,
        *args,
    ]
    return subprocess.run(command, check=False, capture_output=True, text=True, env=CHILD_ENV, timeout=600)


def test_torchrun_eval_matches_one_process_and_resumes_after_a_killed_rank(tmp_path, data_dir):
    args = ["eval", "--model", "tiny-random-llama", "--task", "copa,sst2", "--methods", "none,iti,fasb"]
    args += [
        "--controls",
        "reversed",
        "--n-items",
        "9",
        "--n-pool",
        "10",
        "--k",
        "4",
        "--data-dir",
        str(data_dir),
    ]
    # The one-process run gets the ranks' environment too: with another thread count the BLAS rounds
    # differently (seen on AMD EPYC), and the rows must match exactly.
    single = subprocess.run(
        [sys.executable, "-m", "fasb_tl.cli", *args, "--out", str(tmp_path / "one")],
        check=False,
        capture_output=True,
        text=True,
        env=CHILD_ENV,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    script = tmp_path / "kill_rank_one.py"
    script.write_text(KILL_RANK_ONE)
    killed = torchrun([str(script)], [*args, "--out", str(tmp_path / "two")])
    assert killed.returncode != 0
    shard_files = list((tmp_path / "two" / "shards").glob("*/rank1-of-2.json"))
    assert len(shard_files) == 1
    resumed = torchrun(["-m", "fasb_tl.cli"], [*args, "--out", str(tmp_path / "two")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    one, two = ResultStore(tmp_path / "one").rows, ResultStore(tmp_path / "two").rows
    assert len({r["key"] for r in two}) == len(two) == len(one)
    assert comparable(two) == comparable(one)
    assert not any((tmp_path / "two" / "shards").glob("*/*"))
    # Only rank 0 prints the tables.
    assert resumed.stdout.count("Multiple-choice accuracy (%), paper protocol") == 1
