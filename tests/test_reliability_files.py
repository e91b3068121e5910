"""Reliability of the Steerer folder and of the files it is made of (issue "Reliability, round 2", part A).

Every test builds the bad state by hand (a crafted file, a link, a leftover of a killed write) and checks that
the library refuses it with a clear error, recovers from it, or leaves the user's files alone.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import fasb_tl.cli
import fasb_tl.data
from fasb_tl import _io
from fasb_tl.cli import main
from fasb_tl.evaluation.artifacts import load_steerer_if_valid
from fasb_tl.fitting import control_steerer
from fasb_tl.steering import META_FILE, TENSOR_FILE, Steerer, SteererFormatError


def crafted(steerer: Steerer, folder: Path, tensors=None, meta=None, meta_text: str | None = None) -> Path:
    """A Steerer folder written by ``steerer.save`` and then edited behind the library's back."""
    steerer.save(folder)
    if tensors:
        values = load_file(folder / TENSOR_FILE)
        values.update({name: edit(values[name].clone()) for name, edit in tensors.items()})
        save_file(values, str(folder / TENSOR_FILE))
    if meta is not None or meta_text is not None:
        raw = json.loads((folder / META_FILE).read_text())
        raw.update(meta or {})
        (folder / META_FILE).write_text(meta_text if meta_text is not None else json.dumps(raw))
    return folder


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def set_row(value: float, row: int = 0):
    def edit(tensor):
        tensor[row] = value
        return tensor

    return edit


# --- item 1: --overwrite replaces only a Steerer folder; fasb fit checks --out before any work -------------


def test_overwrite_refuses_a_folder_that_is_not_a_steerer(steerer, tmp_path):
    out = tmp_path / "p"
    (out / "src").mkdir(parents=True)
    (out / "src" / "a.tex").write_text("x")
    with pytest.raises(FileExistsError, match=rf"{re.escape(str(out))}.*not a Steerer folder.*'src'"):
        steerer.save(out, overwrite=True)
    assert (out / "src" / "a.tex").read_text() == "x"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("my notes"), "is not a folder"),
        (lambda p: (p.mkdir(), (p / "notes.txt").write_text("x")), "'notes.txt'"),
        (
            lambda p: (p.mkdir(), (p / META_FILE).write_text("{}"), (p / "results.csv").write_text("x")),
            "results",
        ),
        (lambda p: (p.mkdir(), (p / "head_accuracy.png").mkdir()), "not a regular file"),
        (
            lambda p: (p.mkdir(), (p / META_FILE).symlink_to(p.parent / "elsewhere.json")),
            "not a regular file",
        ),
        (lambda p: ((p.parent / "real").mkdir(), p.symlink_to(p.parent / "real")), "symbolic link"),
    ],
    ids=["file", "other-file", "steerer-and-results", "folder-as-heatmap", "linked-json", "linked-folder"],
)
def test_overwrite_leaves_anything_but_a_steerer_folder_alone(steerer, tmp_path, make, message):
    out = tmp_path / "out"
    make(out)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(FileExistsError, match=message):
        steerer.save(out, overwrite=True)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_overwrite_replaces_a_steerer_folder_with_its_heatmap_and_calibrations(steerer, tmp_path):
    out = steerer.save(tmp_path / "s")
    for name in ("head_accuracy.png", "calibration-back3.json", ".head_accuracy.png.host.12.tmp"):
        (out / name).write_text("x")
    steerer.save(out, overwrite=True)
    assert sorted(os.listdir(out)) == [META_FILE, TENSOR_FILE]
    (tmp_path / "empty").mkdir()
    steerer.save(tmp_path / "empty", overwrite=True)
    assert Steerer.load(tmp_path / "empty").k == steerer.k


def test_the_api_names_overwrite_true(steerer, tmp_path):
    out = steerer.save(tmp_path / "s")
    with pytest.raises(FileExistsError, match=r"pass overwrite=True"):
        steerer.save(out)


@pytest.fixture
def no_fitting(monkeypatch):
    """fasb fit fails loudly if it loads data or a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("fasb fit started work before checking --out")

    monkeypatch.setattr(fasb_tl.cli, "_load", refuse)
    monkeypatch.setattr(fasb_tl.data, "load_dataset", refuse)


def fit_args(out, *extra: str) -> list[str]:
    return ["fit", "--model", "tiny-random-llama", "--k", "2", "--out", str(out), *extra]


def test_fasb_fit_refuses_an_existing_steerer_without_overwrite_before_any_work(
    steerer, tmp_path, no_fitting
):
    out = steerer.save(tmp_path / "s")
    with pytest.raises(SystemExit) as refused:
        main(fit_args(out))
    assert "--overwrite" in str(refused.value.code) and "overwrite=True" not in str(refused.value.code)


@pytest.mark.parametrize(
    ("make", "out", "message"),
    [
        (
            lambda root: ((root / "p" / "src").mkdir(parents=True), (root / "p/src/a.tex").write_text("x")),
            "p",
            "src",
        ),
        (lambda root: (root / "f").write_text("x"), "f", "is a file"),
        (lambda root: (root / "f").write_text("x"), "f/steerer", "is a file"),
    ],
    ids=["folder-of-sources", "file", "under-a-file"],
)
def test_fasb_fit_overwrite_checks_the_out_folder_before_any_work(
    tmp_path, no_fitting, make, out, message, capsys
):
    make(tmp_path)
    before = {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as refused:
        main(fit_args(tmp_path / out, "--overwrite"))
    # Refused by the --out check of the argument parser (exit 2, message on stderr) or of cmd_fit.
    said = f"{refused.value.code} {capsys.readouterr().err}"
    assert str(tmp_path / out.split("/")[0]) in said
    assert message in said
    assert {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_fasb_fit_refuses_an_unwritable_parent_before_any_work(tmp_path, no_fitting, monkeypatch, capsys):
    parent = tmp_path / "locked"
    parent.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: pretend the folder is read-only
        real = os.access
        monkeypatch.setattr(
            os, "access", lambda path, mode, **kw: Path(path) != parent and real(path, mode, **kw)
        )
    else:
        parent.chmod(0o555)
    try:
        with pytest.raises(SystemExit) as refused:
            main(fit_args(parent / "s"))
    finally:
        parent.chmod(0o755)
    said = f"{refused.value.code} {capsys.readouterr().err}"
    assert "writable" in said and str(parent) in said


def test_fasb_fit_overwrite_replaces_its_own_output(steerer, tmp_path, capsys):
    out = steerer.save(tmp_path / "s")  # as an earlier fasb fit --calibrate leaves it
    for name in ("head_accuracy.png", "calibration-back3.json"):
        (out / name).write_text("x")
    assert main(fit_args(out, "--overwrite")) == 0
    assert (out / "head_accuracy.png").read_bytes().startswith(b"\x89PNG")
    assert Steerer.load(out).k == 2
    assert sorted(os.listdir(tmp_path)) == ["s"]


# --- item 7: crafted values ---------------------------------------------------------------------------------


BAD_VALUES = {
    "negative-sigma": ("sigmas", set_row(-1.0)),
    "nan-sigma": ("sigmas", set_row(float("nan"))),
    "huge-sigma": ("sigmas", set_row(3e38)),
    "sigma-over-the-cap": ("sigmas", set_row(2e6)),
    "long-direction": ("directions", lambda d: d * 2),
    "zero-direction": ("directions", set_row(0.0)),
    "slightly-long-direction": ("directions", lambda d: d * 1.01),
    "accuracy-above-1": ("val_accuracy", set_row(1.5)),
    "negative-accuracy": ("val_accuracy", set_row(-0.1)),
    "huge-probe-weight": ("probe_weights", set_row(1e30)),
    "huge-probe-bias": ("probe_bias", set_row(-1e30)),
}


@pytest.mark.parametrize("case", BAD_VALUES, ids=list(BAD_VALUES))
def test_crafted_values_are_refused_on_load_and_on_construction(steerer, tmp_path, case):
    name, edit = BAD_VALUES[case]
    folder = crafted(steerer, tmp_path / "s", tensors={name: edit})
    with pytest.raises(SteererFormatError, match=name):
        Steerer.load(folder)
    with pytest.raises(SteererFormatError, match=name):
        replace(steerer, **{name: edit(getattr(steerer, name).clone())})


def test_every_steerer_the_package_makes_passes(steerer, tiny_model, tmp_path):
    from fasb_tl.data import dataset_splits, load_builtin
    from fasb_tl.fitting import fit_steerer

    records = load_builtin()[:40]
    split = dataset_splits("builtin", len(records))[0]
    made = [steerer, control_steerer(steerer, "reversed"), control_steerer(steerer, "random", seed=7)]
    made += [
        fit_steerer(tiny_model, records, split, k=3, direction=kind, progress=False)
        for kind in ("probe", "random")
    ]
    made += [s.to(dtype=dtype) for s in made for dtype in (torch.bfloat16, torch.float16, torch.float64)]
    for index, made_steerer in enumerate(made):
        loaded = Steerer.load(made_steerer.save(tmp_path / str(index)))
        assert torch.equal(loaded.directions, made_steerer.directions.float())


# --- item 9: an interrupted save is recovered or cleaned; stale temporaries go -------------------------------


def test_a_save_killed_between_its_renames_is_recovered_on_load(steerer, tmp_path):
    folder = steerer.save(tmp_path / "s")
    os.rename(folder, tmp_path / ".s.old")  # the old folder moved aside, the new one not yet in place
    assert Steerer.load(folder).k == steerer.k
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_a_save_killed_between_its_renames_is_recovered_on_the_next_save(steerer, tmp_path):
    folder = steerer.save(tmp_path / "s")
    os.rename(folder, tmp_path / ".s.old")
    with pytest.raises(FileExistsError, match="overwrite=True"):  # the recovered Steerer is protected again
        steerer.save(folder)
    assert sorted(os.listdir(tmp_path)) == ["s"]
    os.rename(folder, tmp_path / ".s.old")
    steerer.save(folder, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_a_leftover_old_folder_is_removed_when_the_new_one_is_in_place(steerer, tmp_path):
    folder = steerer.save(tmp_path / "s")
    steerer.save(tmp_path / ".s.old")  # killed after the swap, before the old folder was deleted
    assert Steerer.load(folder).k == steerer.k
    assert sorted(os.listdir(tmp_path)) == ["s"]
    steerer.save(tmp_path / ".s.old")
    steerer.save(folder, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_an_old_folder_that_is_no_steerer_is_not_moved_in(tmp_path):
    (tmp_path / ".s.old").mkdir()
    (tmp_path / ".s.old" / META_FILE).write_text("{")
    with pytest.raises(SteererFormatError, match="missing"):
        Steerer.load(tmp_path / "s")
    assert sorted(os.listdir(tmp_path)) == [".s.old"]


def test_stale_temporaries_of_dead_writers_are_cleaned_on_the_next_save(steerer, tmp_path):
    target = tmp_path / "s"
    dead, alive = dead_pid(), os.getpid()
    stale_dir = tmp_path / f"{_io.temp_prefix(target, dead)}abc123.tmp"
    stale_dir.mkdir()
    (stale_dir / TENSOR_FILE).write_bytes(b"half")
    stale_file = tmp_path / f"{_io.temp_prefix(target, dead)}tmp"
    stale_file.write_text("half")
    live_dir = tmp_path / f"{_io.temp_prefix(target, alive)}xyz789.tmp"
    live_dir.mkdir()
    other_host = tmp_path / f".s.otherhost.{dead}.abc123.tmp"
    other_host.mkdir()
    steerer.save(target)
    assert sorted(os.listdir(tmp_path)) == sorted(["s", live_dir.name, other_host.name])


def test_stale_temporary_files_of_dead_writers_are_cleaned_on_the_next_atomic_write(tmp_path):
    target = tmp_path / "report.json"
    (tmp_path / f"{_io.temp_prefix(target, dead_pid())}tmp").write_text("half")
    _io.atomic_write_text(target, "{}")
    assert os.listdir(tmp_path) == ["report.json"]


def test_publish_dir_cleans_stale_build_folders(tmp_path):
    target = tmp_path / "model"
    stale = tmp_path / f"{_io.temp_prefix(target, dead_pid())}abc123.tmp"
    stale.mkdir()
    _io.publish_dir(lambda folder: (folder / "a").write_text("x"), target)
    assert os.listdir(tmp_path) == ["model"]


# --- item 12: loose types in steerer.json ------------------------------------------------------------------


LOOSE_TYPES = [
    ("n_layers", 2.0, "int"),
    ("n_heads", True, "int"),
    ("d_head", "16", "int"),
    ("format_version", True, "int"),
    ("model_name", 123, "str"),
    ("direction", 5, "str"),
    ("dataset", None, "str"),
    ("split_seed", "abc", "int or None"),
    ("fold", 1.5, "int or None"),
    ("n_train", False, "int or None"),
    ("library_version", ["1"], "str"),
]


@pytest.mark.parametrize(("field", "value", "expected"), LOOSE_TYPES, ids=[f for f, _, _ in LOOSE_TYPES])
def test_loose_types_are_refused_naming_field_value_and_type(steerer, tmp_path, field, value, expected):
    folder = crafted(steerer, tmp_path / "s", meta={field: value})
    pattern = rf"'{field}' is {re.escape(repr(value))}.*expected {expected}$"
    with pytest.raises(SteererFormatError, match=pattern):
        Steerer.load(folder)
    if field != "format_version":
        with pytest.raises(SteererFormatError, match=f"'{field}'"):
            replace(steerer, meta=replace(steerer.meta, **{field: value}))


@pytest.mark.parametrize(("field", "value"), [("n_layers", 0), ("d_head", -16), ("fold", -1), ("n_val", -3)])
def test_out_of_range_metadata_is_refused(steerer, tmp_path, field, value):
    with pytest.raises(SteererFormatError, match=f"'{field}' is {value}, expected an int >= "):
        Steerer.load(crafted(steerer, tmp_path / "s", meta={field: value}))


# --- item 13: links, folders and FIFOs in place of the files -----------------------------------------------


@pytest.mark.parametrize("name", [META_FILE, TENSOR_FILE])
def test_a_symlinked_file_is_refused(steerer, tmp_path, name):
    folder = steerer.save(tmp_path / "s")
    outside = steerer.save(tmp_path / "outside") / name
    (folder / name).unlink()
    (folder / name).symlink_to(outside)
    with pytest.raises(SteererFormatError, match=rf"{name} is a symbolic link"):
        Steerer.load(folder)


@pytest.mark.parametrize("name", [META_FILE, TENSOR_FILE])
@pytest.mark.parametrize(
    ("make", "kind"), [(os.mkdir, "a directory"), (os.mkfifo, "a FIFO")], ids=["dir", "fifo"]
)
def test_a_directory_or_fifo_in_place_of_a_file_is_named(steerer, tmp_path, name, make, kind):
    folder = steerer.save(tmp_path / "s")
    (folder / name).unlink()
    make(folder / name)
    with pytest.raises(SteererFormatError, match=rf"{name} is {kind}, not a regular file"):
        Steerer.load(folder)


def test_a_linked_steerer_folder_still_loads(steerer, tmp_path):
    (tmp_path / "link").symlink_to(steerer.save(tmp_path / "s"))
    assert Steerer.load(tmp_path / "link").k == steerer.k


# --- item 14: size caps and hostile JSON -------------------------------------------------------------------


def test_an_oversized_json_is_refused_before_it_is_read(steerer, tmp_path):
    folder = steerer.save(tmp_path / "s")
    text = (folder / META_FILE).read_text()
    (folder / META_FILE).write_text(text + " " * (1 << 20))  # still valid JSON
    with pytest.raises(SteererFormatError, match=r"steerer.json is \d+ bytes, more than the 1048576"):
        Steerer.load(folder)


def test_an_oversized_safetensors_file_is_refused_before_it_is_read(steerer, tmp_path):
    folder = steerer.save(tmp_path / "s")
    os.truncate(folder / TENSOR_FILE, 1 << 31)  # sparse: no disk used
    with pytest.raises(
        SteererFormatError, match=r"steerer.safetensors is 2147483648 bytes, more than the \d+"
    ):
        Steerer.load(folder)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ('{"n_layers": ' + "1" * 5000 + "}", "not valid JSON"),
        ('{"n_layers": 2, "n_layers": 3}', "repeated key 'n_layers'"),
        ("[1, 2]", "a list, expected a JSON object"),
        ("\xff\xfe", "not valid JSON"),
    ],
    ids=["deep-nesting", "5000-digits", "repeated-key", "not-an-object", "not-utf8"],
)
def test_hostile_json_gives_a_format_error(steerer, tmp_path, text, message):
    folder = steerer.save(tmp_path / "s")
    (folder / META_FILE).write_bytes(text.encode("latin-1"))
    with pytest.raises(SteererFormatError, match=message):
        Steerer.load(folder)


# --- created folders follow the umask ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("umask", "mode"), [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)], ids=["022", "077", "002"]
)
def test_created_folders_follow_the_umask(steerer, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        saved = steerer.save(tmp_path / "s")
        replaced = steerer.save(tmp_path / "s", overwrite=True)
        published = _io.publish_dir(lambda folder: (folder / "a").write_text("x"), tmp_path / "model")
        swapped = _io.replace_dir(lambda folder: (folder / "b").write_text("y"), tmp_path / "other")
    finally:
        os.umask(old)
    for folder in (saved, replaced, published, swapped):
        assert stat.S_IMODE(os.stat(folder).st_mode) == mode, folder
    assert stat.S_IMODE(os.stat(saved / TENSOR_FILE).st_mode) == mode & 0o666


# --- the evaluation refits on every new refusal ------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda s, p: crafted(s, p, tensors={"sigmas": set_row(3e38)}),
        lambda s, p: crafted(s, p, meta={"n_layers": 2.0}),
        lambda s, p: crafted(s, p, meta_text='{"a": ' + "1" * 5000 + "}"),
    ],
    ids=["huge-sigma", "float-n-layers", "5000-digits"],
)
def test_the_evaluation_treats_a_refused_steerer_as_missing(steerer, tiny_model, tmp_path, make):
    folder = make(steerer, tmp_path / "s")
    assert load_steerer_if_valid(folder, tiny_model) is None
    steerer.save(folder, overwrite=True)  # what ArtifactCache does next: the refit replaces the folder
    assert load_steerer_if_valid(folder, tiny_model) is not None
