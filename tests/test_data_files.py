"""The repository stands on its own: its data files, their checksums, the packaged TruthfulQA, the lookup
order, and no reference to anything outside the clone."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fasb_tl.data import DatasetError, load_truthfulqa, paths
from fasb_tl.data.paths import dataset_dir, packaged_data_dir, repository_data_dir
from fasb_tl.evaluation.multichoice_data import TASK_FOLDERS, load_task

REPO = Path(__file__).resolve().parents[1]
# Spelled in pieces so that this file does not match itself.
OUTSIDE_FOLDER_MARKERS = ("../" + "shared", "shared" + "/data")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listed_sums(folder: Path) -> dict[str, str]:
    sums = {}
    for line in (folder / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.lstrip("*")] = digest
    return sums


def test_no_tracked_file_refers_to_a_folder_outside_the_repository():
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    assert len(listed) > 100, "git ls-files listed almost nothing: is this a clone?"
    offenders = []
    for name in filter(None, listed):
        path = REPO / name.decode()
        if path.is_file():
            content = path.read_bytes()
            offenders += [f"{name.decode()}: {m}" for m in OUTSIDE_FOLDER_MARKERS if m.encode() in content]
    assert offenders == []


def test_every_data_file_matches_its_checksum_and_every_file_is_listed():
    folder = REPO / "data"
    sums = listed_sums(folder)
    present = {
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.name not in ("README.md", "SHA256SUMS")
    }
    assert present == set(sums)
    mismatched = [name for name, digest in sums.items() if sha256(folder / name) != digest]
    assert mismatched == []
    # The datasets the issue names, each with its files.
    for needed in (
        "truthfulqa/TruthfulQA.csv",
        "truthfulqa/mc_task.json",
        "copa/test.jsonl",
        "nli/snli/test.tsv",
        "nli/xnli_en/dev-en.tsv",
        "mmlu/test/virology_test.csv",
        "sst2/stsa.binary.test",
        "winogrande/test.json",
        "truthfulqa/LICENSE",
        "mmlu/LICENSE",
    ):
        assert needed in sums
    assert any(name.startswith("storycloze/") for name in sums)


def test_the_packaged_truthfulqa_is_the_repository_copy():
    packaged = packaged_data_dir() / "truthfulqa"
    assert sorted(p.name for p in packaged.iterdir()) == ["LICENSE", "TruthfulQA.csv", "mc_task.json"]
    sums = listed_sums(REPO / "data")
    for path in packaged.iterdir():
        assert sha256(path) == sums[f"truthfulqa/{path.name}"], path.name


@pytest.fixture
def installed_layout(monkeypatch, tmp_path):
    """What a plain `pip install fasb-tl` sees: no checkout around the package and no $FASB_TL_DATA."""
    monkeypatch.delenv("FASB_TL_DATA", raising=False)
    monkeypatch.setattr(paths, "_CHECKOUT_ROOT", tmp_path / "site-packages")
    assert repository_data_dir() is None


def test_truthfulqa_loads_from_the_package_when_nothing_else_is_there(installed_layout, data_dir):
    assert dataset_dir("truthfulqa") == packaged_data_dir() / "truthfulqa"
    packaged = load_truthfulqa()
    assert len(packaged) == 817
    from_repository = load_truthfulqa(data_dir)
    assert packaged == from_repository
    assert [r.extra for r in packaged] == [r.extra for r in from_repository]


def test_without_a_checkout_the_other_datasets_fail_naming_every_place(installed_layout):
    with pytest.raises(DatasetError) as caught:
        load_task("copa", "eval")
    message = str(caught.value)
    assert "dataset 'copa' not found" in message
    assert "the repository's data folder" in message and "not running from a checkout" in message
    assert "FASB_TL_DATA" in message and "data_dir" in message


def test_an_empty_fasb_tl_data_is_used_as_given_and_named_in_the_error(monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("FASB_TL_DATA", str(empty))
    for load, name in ((lambda: load_task("mmlu", "eval"), "mmlu"), (load_truthfulqa, "truthfulqa")):
        with pytest.raises(DatasetError) as caught:
            load()
        message = str(caught.value)
        assert f"$FASB_TL_DATA='{empty}'" in message and f"has no {name}/ subfolder" in message
    if name == "truthfulqa":
        assert "load_truthfulqa_hub()" in message


def test_lookup_order_data_dir_then_environment_then_repository(monkeypatch, tmp_path, data_dir):
    own = tmp_path / "own"
    (own / "copa").mkdir(parents=True)
    monkeypatch.delenv("FASB_TL_DATA", raising=False)
    assert dataset_dir("copa") == data_dir / "copa"
    monkeypatch.setenv("FASB_TL_DATA", str(own))
    assert dataset_dir("copa") == own / "copa"
    assert dataset_dir("copa", data_dir) == data_dir / "copa"
    assert set(TASK_FOLDERS.values()) <= {p.name for p in data_dir.iterdir()}


@pytest.mark.integration
def test_a_non_editable_install_reads_its_packaged_truthfulqa(tmp_path):
    """Build and install the package as a user would (not editable), then load TruthfulQA with no folder."""
    source, target = tmp_path / "source", tmp_path / "site"
    # A copy of what a source distribution holds, so the build leaves nothing in the checkout.
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    script = (
        "import fasb_tl, fasb_tl.data.paths as p; from fasb_tl.data import load_truthfulqa; "
        "print(fasb_tl.__file__); print(p.repository_data_dir()); print(len(load_truthfulqa()))"
    )
    env = {k: v for k, v in os.environ.items() if k != "FASB_TL_DATA"}
    env["PYTHONPATH"] = str(target)
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0].startswith(str(target)) and out[1] == "None" and out[2] == "817"
