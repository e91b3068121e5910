"""Atomic writes (``fasb_tl._io``): a file or folder is whole or absent, never half-written."""

import os

import pytest

from fasb_tl._io import atomic_write, atomic_write_text, publish_dir, replace_dir


def test_atomic_write_text_replaces_a_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    atomic_write_text(target, "a,b\n")
    atomic_write_text(target, "c,d\n")
    assert target.read_text(encoding="utf-8") == "c,d\n"
    assert [p.name for p in target.parent.iterdir()] == ["table.csv"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def write(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, write)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_publish_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "model"

    def build(folder):
        (folder / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        publish_dir(build, target)
    assert list(tmp_path.iterdir()) == []


def test_publish_dir_keeps_the_first_published_copy(tmp_path):
    target = tmp_path / "model"
    publish_dir(lambda folder: (folder / "a").write_text("first"), target)
    publish_dir(lambda folder: (folder / "a").write_text("second"), target)
    assert (target / "a").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_replace_dir_swaps_in_the_new_folder(tmp_path):
    target = tmp_path / "steerer"
    replace_dir(lambda folder: (folder / "a").write_text("first"), target)
    replace_dir(lambda folder: (folder / "b").write_text("second"), target)
    assert os.listdir(target) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["steerer"]


def test_replace_dir_keeps_the_old_folder_when_building_fails(tmp_path):
    target = tmp_path / "steerer"
    replace_dir(lambda folder: (folder / "a").write_text("first"), target)

    def build(folder):
        (folder / "half").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_dir(build, target)
    assert (target / "a").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["steerer"]
