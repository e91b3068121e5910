"""Atomic writes, the one home for them: readers never see half a file or half a folder.

A file is written to a temporary file in its own folder, fsynced and renamed over the target
(:func:`atomic_write`, :func:`atomic_write_text`). A folder is built in a temporary folder beside the target
and renamed into place: :func:`publish_dir` keeps an existing target (the first copy published wins),
:func:`replace_dir` swaps a new one in for it (through ``.{name}.old``; :func:`recover_replaced` finishes or
undoes a swap that was killed half-way).

Temporaries are named ``.{name}.{host}.{pid}.tmp`` (files) and ``.{name}.{host}.{pid}.{random}.tmp``
(folders, from :func:`tempfile.mkdtemp`), so the next write to ``name`` removes those that a dead process of
this host left behind (:func:`remove_stale_temporaries`); another host's, or a live process's, are left alone.
A created folder gets the mode the process umask gives a new folder (``mkdtemp`` alone makes it 0700).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# This host's name as it appears in temporary names: letters, digits and '-' only, at most 32 characters.
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"
_TEMP_TAIL = re.compile(r"(\d+)(?:\.[A-Za-z0-9_]+)?\.tmp")


def temp_prefix(target: Path, pid: int | None = None) -> str:
    """The start of the names of the temporaries of a write to ``target`` by process ``pid`` (this one)."""
    return f".{target.name}.{HOST}.{os.getpid() if pid is None else pid}."


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host may still be running (when unsure: yes)."""
    if os.name != "posix" or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove(path: Path) -> None:
    """Remove ``path``, a folder (recursively) or anything else; a link is removed, not followed."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(target: Path) -> None:
    """Remove the temporaries of writes to ``target`` left by processes of this host that have exited."""
    start = f".{target.name}.{HOST}."
    try:
        entries = [entry for entry in target.parent.iterdir() if entry.name.startswith(start)]
    except OSError:
        return
    for entry in entries:
        match = _TEMP_TAIL.fullmatch(entry.name[len(start) :])
        if match and not _alive(int(match[1])):
            _remove(entry)


def _umask() -> int:
    """The process umask (read from /proc where it can be, since setting it to read it is not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Have ``write(tmp)`` write a temporary file beside ``path``, fsync it and rename it over ``path``.

    A failure (or Ctrl-C) before the rename leaves ``path`` as it was and removes the temporary file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = target.with_name(f"{temp_prefix(target)}tmp")
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
    """A new empty folder beside ``target`` (same file system, so a rename is atomic), removed on exit.

    Dead writers' temporaries of ``target`` go first; the folder gets the umask's mode, not mkdtemp's 0700.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
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


def old_path(target: Path) -> Path:
    """Where :func:`replace_dir` keeps the folder it replaces until the new one is in place."""
    return target.with_name(f".{target.name}.old")


def recover_replaced(target: Path, valid: Callable[[Path], bool]) -> None:
    """Finish or undo a :func:`replace_dir` of ``target`` that was killed half-way.

    With ``target`` in place, a leftover ``.{name}.old`` is the replaced folder: it is removed. With ``target``
    missing, the swap stopped between its two renames: ``.{name}.old`` is moved back if ``valid(old)``.
    """
    old = old_path(target)
    if not os.path.lexists(old):
        return
    if os.path.lexists(target):
        _remove(old)
    elif old.is_dir() and not old.is_symlink() and valid(old):
        try:
            os.rename(old, target)
        except OSError:
            if not os.path.lexists(target):  # else another process recovered it first
                raise


def replace_dir(build: Callable[[Path], object], target: Path) -> Path:
    """Build a folder with ``build(tmp_dir)`` and put it at ``target``, replacing whatever is there.

    An existing ``target`` is renamed to ``.{name}.old``, the new folder renamed in, and the old one removed,
    so ``target`` is never half-written: a failure in ``build`` leaves the old folder untouched. The caller
    decides whether ``target`` may be replaced (``Steerer.save`` replaces only a Steerer folder).
    """
    with _staging_dir(target) as tmp:
        build(tmp)
        if os.path.lexists(target):
            old = old_path(target)
            _remove(old)
            os.rename(target, old)
            os.rename(tmp, target)
            _remove(old)
        else:
            os.rename(tmp, target)
    return target


# Folder locks.


LOCK_FILE = ".fasb.lock"


class FolderLockedError(RuntimeError):
    """Another process holds the folder's lock (see :func:`folder_lock`)."""


def _lock_owner(descriptor: int) -> str:
    """What the lock file says about its holder (informative only: the kernel holds the lock, not the file)."""
    try:
        owner = json.loads(os.pread(descriptor, 65536, 0).decode("utf-8"))
        return f"pid {owner['pid']} on {owner['host']}, running {owner['command']!r} since {owner['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not recorded itself yet"


def _lock_record() -> str:
    """This process as the lock file records it: pid, host, command and start time."""
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": since})


@contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder`` exclusively for the block: an ``fcntl.flock`` on ``folder/.fasb.lock``.

    Another holder (another process, or another open in this one) is refused at once with
    :class:`FolderLockedError`, naming the folder and the holder's pid, host and command, which the lock file
    records. The kernel drops the lock when its process exits, however it exits, so the file a killed process
    leaves behind never blocks anyone; the file itself stays (removing it would let two processes lock two files).
    """
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(target / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderLockedError(
                f"{target} is in use by another process ({_lock_owner(descriptor)}); two runs writing one "
                "folder would lose rows: wait for it to finish, or give this run another folder"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, _lock_record().encode("utf-8"), 0)
        try:
            yield target / LOCK_FILE
        finally:
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
