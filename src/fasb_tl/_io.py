"""Atomic writes, the one home for them: readers never see half a file or half a folder.

A file is written to a temporary file in its own folder, fsynced and renamed over the target
(:func:`atomic_write`, :func:`atomic_write_text`). A folder is built in a temporary folder beside the target
and renamed into place: :func:`publish_dir` keeps an existing target (the first copy published wins),
:func:`replace_dir` swaps a new one in for it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Have ``write(tmp)`` write a temporary file beside ``path``, fsync it and rename it over ``path``.

    A failure (or Ctrl-C) before the rename leaves ``path`` as it was and removes the temporary file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        descriptor = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temporary file and a rename, so readers never see half a file."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextmanager
def _staging_dir(target: Path) -> Iterator[Path]:
    """A new empty folder beside ``target`` (same file system, so a rename is atomic), removed on exit."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(build: Callable[[Path], object], target: Path) -> Path:
    """Build a folder with ``build(tmp_dir)`` and rename it to ``target`` atomically.

    A crash or Ctrl-C leaves only a temporary folder, never a half-written ``target``; when two processes
    race, the loser discards its copy and uses the winner's. An existing ``target`` is returned as it is.
    """
    if target.exists():
        return target
    with _staging_dir(target) as tmp:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.exists():
                raise
    return target


def replace_dir(build: Callable[[Path], object], target: Path) -> Path:
    """Build a folder with ``build(tmp_dir)`` and put it at ``target``, replacing any folder there.

    An existing ``target`` is renamed to ``.{name}.old``, the new folder renamed in, and the old one removed,
    so ``target`` is never half-written: a failure in ``build`` leaves the old folder untouched.
    """
    with _staging_dir(target) as tmp:
        build(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    return target
