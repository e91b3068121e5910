"""Reliability of what an evaluation writes and reads back: the result folder's lock, ``results.jsonl`` /
``results.csv`` (checked on load, the csv rebuilt and stale temporary files removed on opening), torchrun shard
files (checksummed caches) and calibration files (validated caches)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from fasb_tl._io import LOCK_FILE, FolderLockedError, folder_lock, temp_prefix
from fasb_tl.calibration import (
    CalibrationFormatError,
    ThresholdCalibration,
    calibrate_threshold,
    calibration_path,
)
from fasb_tl.distributed import Shard, sharded_map
from fasb_tl.evaluation.artifacts import ArtifactCache
from fasb_tl.evaluation.multichoice import MultiChoiceConfig
from fasb_tl.evaluation.results import ResultFileError, ResultStore, row_key
from fasb_tl.evaluation.rows import row_identity
from fasb_tl.evaluation.runner import EvalPlan, run_plan
from fasb_tl.evaluation.sharding import open_result_folder

CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
COMMITTED = Path(__file__).resolve().parents[1] / "results"


def child(code: str, *args: str, **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], env=CHILD_ENV, text=True, stderr=subprocess.PIPE, **options
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


# ---- 4. One writer per result folder ------------------------------------------------------------------------

HOLD = """
import sys
from pathlib import Path
from fasb_tl.distributed import Shard
from fasb_tl.evaluation.sharding import open_result_folder
with open_result_folder(Path(sys.argv[1]), Shard()):
    Path(sys.argv[2]).write_text("held")
    sys.stdin.read()  # until the test closes it
"""


def tiny_plan() -> EvalPlan:
    return EvalPlan(tasks=["copa"], methods=["none"], multichoice=MultiChoiceConfig(n_pool=10, n_eval=6, k=4))


def test_a_second_run_into_a_held_folder_is_refused_at_once_then_succeeds(tiny_model, data_dir, tmp_path):
    out = tmp_path / "out"
    holder = child(HOLD, str(out), str(tmp_path / "held"), stdin=subprocess.PIPE)
    wait_for(tmp_path / "held", holder)
    record = json.loads((out / LOCK_FILE).read_text())
    assert record["pid"] == holder.pid and record["host"] and record["command"]
    start = time.monotonic()
    with pytest.raises(FolderLockedError, match=rf"{re.escape(str(out))}.*in use.*pid {holder.pid}\b"):
        run_plan(
            object(), tiny_plan(), out, data_dir=str(data_dir), progress=False
        )  # the model is not touched
    assert time.monotonic() - start < 5
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    holder.communicate("", timeout=60)
    assert holder.returncode == 0
    run_plan(tiny_model, tiny_plan(), out, data_dir=str(data_dir), progress=False)
    assert len(ResultStore(out).rows) == 1 and (out / LOCK_FILE).read_text() == ""
    # A run with nothing left to do still repairs the csv (item 8).
    (out / "results.csv").unlink()
    run_plan(tiny_model, tiny_plan(), out, data_dir=str(data_dir), progress=False)
    assert pd.read_csv(out / "results.csv")["key"].tolist() == [ResultStore(out).rows[0]["key"]]


def test_the_lock_of_a_killed_process_does_not_block_and_a_failed_run_releases_it(tmp_path):
    code = "import os, signal, sys\nfrom fasb_tl._io import folder_lock\n"
    code += "with folder_lock(sys.argv[1]):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    killed = child(code, str(tmp_path))
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == killed.pid  # left behind, yet not held
    with pytest.raises(KeyboardInterrupt), open_result_folder(tmp_path, Shard()):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        raise KeyboardInterrupt
    with open_result_folder(tmp_path, Shard()):
        with open_result_folder(tmp_path, Shard()):  # nested (several run_plan calls in one held folder)
            pass
        with pytest.raises(FolderLockedError, match=f"pid {os.getpid()}"), folder_lock(tmp_path):
            pass  # still held: another open of the lock file, even in this process, is refused
    with folder_lock(tmp_path), pytest.raises(FolderLockedError, match=f"pid {os.getpid()}"):
        open_result_folder(tmp_path, Shard()).__enter__()


def fasb(args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fasb_tl.cli", *args]
    return subprocess.run(command, check=False, env=CHILD_ENV, capture_output=True, text=True, timeout=300)


# The first sweep pauses right after its second row reached results.jsonl, until the test lets it go on.
PAUSE_AFTER_TWO_ROWS = """
import os, sys, time
from pathlib import Path
from fasb_tl.cli import main

flag, rows, real_replace = Path(sys.argv[1]), [], os.replace

def replace_then_wait(src, dst):
    real_replace(src, dst)
    if Path(dst).name == "results.jsonl":
        rows.append(dst)
        if len(rows) == 2:
            flag.with_suffix(".paused").write_text("")
            while not flag.with_suffix(".go").exists():
                time.sleep(0.05)

os.replace = replace_then_wait
sys.exit(main(sys.argv[2:]))
"""


def test_two_concurrent_sweeps_into_one_folder_lose_no_rows(tmp_path, data_dir):
    args = ["sweep", "--model", "tiny-random-llama", "--task", "copa", "--methods", "none,iti", "--k", "4"]
    args += ["--n-items", "6", "--n-pool", "10", "--grid-alpha", "1,5", "--data-dir", str(data_dir)]
    args += ["--out", str(tmp_path / "out")]
    first = child(PAUSE_AFTER_TWO_ROWS, str(tmp_path / "flag"), *args)
    wait_for(tmp_path / "flag.paused", first)
    written = (tmp_path / "out" / "results.jsonl").read_text()
    second = fasb(args)
    assert second.returncode != 0
    assert f"pid {first.pid}" in second.stderr and "in use by another process" in second.stderr
    assert (tmp_path / "out" / "results.jsonl").read_text() == written
    (tmp_path / "flag.go").write_text("")
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    rows = ResultStore(tmp_path / "out").rows
    assert len(rows) == len({r["key"] for r in rows}) == 4  # none and iti at two alphas
    again = fasb(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert ResultStore(tmp_path / "out").rows == rows


def _open_as_rank(rank: int, world_size: int, rendezvous: str, folder: str, report: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=rendezvous, rank=rank, world_size=world_size, timeout=timedelta(seconds=60)
    )
    try:
        with open_result_folder(Path(folder), Shard(rank, world_size)):
            outcome = "entered"
    except RuntimeError as err:  # FolderLockedError on rank 0, a RuntimeError naming it on the others
        outcome = f"{type(err).__name__}: {err}"
    finally:
        torch.distributed.destroy_process_group()
    Path(report, f"rank{rank}").write_text(outcome)


def test_every_torchrun_rank_fails_at_once_when_the_folder_is_held(tmp_path):
    with folder_lock(tmp_path / "out"):
        mp.start_processes(
            _open_as_rank,
            args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "out"), str(tmp_path)),
            nprocs=2,
            start_method="spawn",
        )
    for rank in (0, 1):
        outcome = (tmp_path / f"rank{rank}").read_text()
        assert "in use by another process" in outcome and f"pid {os.getpid()}" in outcome, outcome


# ---- 8, 9. results.csv rebuilt and stale temporary files removed on opening -----------------------------------

KILL_AT_CSV = """
import os, signal, sys
from fasb_tl.evaluation.results import ResultStore, row_key
store = ResultStore(sys.argv[1])
store.add({"key": row_key(n=1), "value": 1})
real_replace = os.replace
def die_at_the_csv(src, dst):
    if str(dst).endswith("results.csv"):
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
os.replace = die_at_the_csv
store.add({"key": row_key(n=2), "value": 2})
"""


def test_a_kill_between_the_jsonl_and_the_csv_is_repaired_on_opening(tmp_path):
    killed = child(KILL_AT_CSV, str(tmp_path))
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert len(pd.read_csv(tmp_path / "results.csv")) == 1  # stale: the jsonl has two rows
    leftover = tmp_path / f"{temp_prefix(tmp_path / 'results.csv', killed.pid)}tmp"
    assert leftover.is_file()
    ResultStore(tmp_path)  # reading repairs nothing
    assert leftover.is_file()
    with open_result_folder(tmp_path, Shard()):
        pass
    assert pd.read_csv(tmp_path / "results.csv")["value"].tolist() == [1, 2]
    assert not leftover.exists()
    (tmp_path / "results.csv").write_text("key,value\nsomething,else\n")
    with open_result_folder(tmp_path, Shard()):
        assert pd.read_csv(tmp_path / "results.csv")["value"].tolist() == [1, 2]


def test_opening_removes_only_the_stores_own_temporary_files(tmp_path):
    ResultStore(tmp_path).add({"key": row_key(n=1)})
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [f"{temp_prefix(tmp_path / name, dead.pid)}tmp" for name in ("results.jsonl", "results.csv")]
    alive = [f"{temp_prefix(tmp_path / 'results.jsonl', os.getpid())}tmp"]
    others = [
        *alive,
        ".results.jsonl.tmp",
        "results.jsonl.5.tmp",
        ".results.jsonl.5a.tmp",
        ".answers.csv.5.tmp",
    ]
    others += [".results.jsonl.5.tmp.keep", "notes.txt"]
    for name in stale + others:
        (tmp_path / name).write_text("x")
    with open_result_folder(tmp_path, Shard()):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*others, LOCK_FILE, "results.jsonl", "results.csv"]
    )


# ---- 11. Rows checked on load -----------------------------------------------------------------------------------


def real_row(**changes) -> dict:
    identity = {"task": "copa", "model": "tiny", "method": "none", "config": {"alpha": 1.0}}
    return {**identity, "key": row_key(**identity), "accuracy": 0.5, **changes}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "is a JSON list, not a result row"),
        ('"row"', "is a JSON str, not a result row"),
        ('{"value": 1}', "needs a string 'key', got None"),
        ('{"key": 7}', "needs a string 'key', got 7"),
        (json.dumps(real_row()), r"row \w+ is stored already \(line 1\)"),
        (json.dumps(real_row(config={"alpha": 5.0})), "does not match the row's identity fields"),
        (json.dumps(real_row(method="iti")), "does not match the row's identity fields"),
    ],
)
def test_a_bad_results_line_is_refused_naming_file_and_line(tmp_path, line, message):
    (tmp_path / "results.jsonl").write_text(json.dumps(real_row()) + "\n\n" + line + "\n")
    with pytest.raises(ResultFileError, match=rf"{re.escape(str(tmp_path))}/results.jsonl:3\b.*{message}"):
        ResultStore(tmp_path)
    with pytest.raises(ResultFileError, match="results.jsonl:3"), open_result_folder(tmp_path, Shard()):
        pass


def test_new_rows_must_match_their_identity_and_identities_use_known_fields(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(ValueError, match="does not match"):
        store.add(real_row(key=row_key(task="sst2")))
    store.add(real_row())
    assert ResultStore(tmp_path).rows == [real_row()]
    model = SimpleNamespace(cfg=SimpleNamespace(model_name="tiny"))
    with pytest.raises(ValueError, match="row identity fields must be among"):
        row_identity(model, task="copa", method="none", config=tiny_plan().multichoice, caa=None, seed=1)


@pytest.mark.parametrize("folder", sorted(p.parent for p in COMMITTED.rglob("results.jsonl")))
def test_every_committed_row_passes_the_checks(folder):
    rows = ResultStore(folder).rows
    assert rows and len({r["key"] for r in rows}) == len(rows)


# ---- 11. Shard files are checksummed caches --------------------------------------------------------------------


@dataclass(frozen=True)
class RankZeroAlone(Shard):
    """Rank 0 of two, in one process: the other rank's items are filled in by the gather."""

    def gather(self, local):
        return {**{i: 10 * i for i in range(5)}, **local}


def test_a_corrupt_or_altered_shard_file_is_named_and_computed_again(tmp_path):
    calls = []

    def compute(items):
        calls.append(list(items))
        return [10 * i for i in items]

    shard, path = RankZeroAlone(0, 2), tmp_path / "rank0-of-2.json"
    assert sharded_map(shard, list(range(5)), 2, compute, store=tmp_path) == [0, 10, 20, 30, 40]
    assert sharded_map(shard, list(range(5)), 2, compute, store=tmp_path) == [0, 10, 20, 30, 40]
    assert len(calls) == 2  # batches 0 and 2, then the file is reused
    stored = json.loads(path.read_text())
    altered = {**stored, "payload": stored["payload"].replace("40", "41")}
    for bad in ("{trunc", json.dumps(altered), json.dumps({"0": 0, "4": 41}), "[]"):
        path.write_text(bad)
        calls.clear()
        with pytest.warns(UserWarning, match=f"ignoring the shard file {re.escape(str(path))}"):
            assert sharded_map(shard, list(range(5)), 2, compute, store=tmp_path) == [0, 10, 20, 30, 40]
        assert len(calls) == 2 and json.loads(path.read_text()) == stored


# ---- Calibration files are validated caches --------------------------------------------------------------------


def test_calibration_files_are_checked_exactly_and_a_corrupt_one_is_recomputed(tmp_path):
    calibration = calibrate_threshold([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    path = calibration.save(tmp_path / "calibration-back3.json")
    assert ThresholdCalibration.load(path) == calibration
    good = json.loads(path.read_text())
    for changes in (
        {"threshold": "0.5"},
        {"threshold": True},
        {"threshold": 1},
        {"threshold": float("nan")},
        {"trigger_rate_true": 1.5},
        {"n_true": 2.0},
        {"n_false": -1},
        {"criterion": "accuracy"},
        {"extra": 1},
    ):
        path.write_text(json.dumps({**good, **changes}))
        with pytest.raises(CalibrationFormatError, match=re.escape(str(path))):
            ThresholdCalibration.load(path)
    path.write_text('{"threshold": ')
    with pytest.raises(CalibrationFormatError, match="not a calibration file"):
        ThresholdCalibration.load(path)
    cache = ArtifactCache(SimpleNamespace(steerer_dir=tmp_path, shard=Shard()))
    (tmp_path / "fold0").mkdir()
    stale = calibration_path(tmp_path / "fold0", 3)
    stale.write_text(json.dumps({**good, "threshold": "0.5"}))
    with pytest.warns(UserWarning, match=rf"{re.escape(str(stale))}.*calibrating again"):
        assert cache.calibration("fold0", 3, lambda: calibration) == calibration
    assert ThresholdCalibration.load(stale) == calibration
