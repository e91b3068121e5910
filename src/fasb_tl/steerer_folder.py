"""Where a Steerer may be saved: ``Steerer.save(overwrite=True)`` replaces only a folder :func:`replace_problem`
accepts (see :func:`check_target`), and an interrupted save is recovered by :func:`recover` (through
``_io.recover_replaced``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from fasb_tl._io import recover_replaced
from fasb_tl.steerer_file import SteererFormatError, read_folder, validate

# What a Steerer folder holds: its two files, the heatmap of ``fasb fit``, threshold calibrations
# (``calibration.calibration_path``), and the temporaries of their atomic writes (``_io.temp_prefix``).
_FOLDER_FILE = r"steerer\.json|steerer\.safetensors|head_accuracy\.png|calibration-back\d+\.json"
FOLDER_ENTRY = re.compile(rf"(?:{_FOLDER_FILE})|\.(?:{_FOLDER_FILE})\.[A-Za-z0-9-]+\.\d+\.tmp")


def replace_problem(folder: Path) -> str | None:
    """Why ``Steerer.save(overwrite=True)`` may not replace the folder ``folder`` (None: it may).

    It may replace a folder whose entries are all regular files a Steerer folder holds (:data:`FOLDER_ENTRY`):
    an empty one, a Steerer with its heatmap and calibrations, or a damaged one (so the evaluation can refit).
    """
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or not entry.is_file():
            return f"it holds {entry.name!r}, which is not a regular file"
        if not FOLDER_ENTRY.fullmatch(entry.name):
            return f"it holds {entry.name!r}, which a Steerer folder does not"
    return None


def check_target(target: Path, overwrite: bool, knob: str = "overwrite=True") -> None:
    """Raise an :class:`OSError` naming ``target`` and why, unless a Steerer may be saved there: a new folder
    in a writable folder, or, with ``overwrite`` (spelled ``knob`` in the message), a Steerer folder."""
    if target.is_symlink():
        raise FileExistsError(f"{target} is a symbolic link; save the Steerer to a real folder")
    if target.exists():
        if not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a folder; refusing to replace it")
        if not overwrite:
            raise FileExistsError(f"{target} exists; pass {knob} to replace it")
        problem = replace_problem(target)
        if problem:
            raise FileExistsError(
                f"{target} is not a Steerer folder ({problem}); {knob} replaces only a Steerer folder, "
                "so choose another folder or empty this one yourself"
            )
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"cannot save to {target}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot save to {target}: {ancestor} is not writable")


def _loads(folder: Path, meta_class: type) -> bool:
    try:
        meta, tensors = read_folder(folder, meta_class)
        validate(tensors, meta)
    except SteererFormatError:
        return False
    return True


def recover(folder: Path, meta_class: type) -> Path:
    """``folder``, once an interrupted save to it is finished or undone (``_io.recover_replaced``): a leftover
    old Steerer is moved back if ``folder`` is missing and it reads as a Steerer, removed if ``folder`` is in
    place."""
    try:
        recover_replaced(folder, lambda old: _loads(old, meta_class))
    except OSError as err:  # e.g. a read-only folder: report it as an unreadable Steerer
        raise SteererFormatError(f"cannot recover the interrupted save to {folder}: {err}") from err
    return folder
