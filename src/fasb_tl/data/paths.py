"""Where each dataset's files are: the one lookup order for data.

1. ``data_dir`` passed by the caller (``--data-dir`` on the command line);
2. else ``$FASB_TL_DATA``;
3. else the repository's ``data/`` folder, when fasb_tl runs from a checkout (an editable install included);
4. else, for TruthfulQA only, the copy inside the installed package.

A folder named by 1 or 2 is authoritative: a dataset missing from it is an error, never a silent fallback to
another copy. Every folder holds one subfolder per dataset (``truthfulqa/``, ``copa/``, ...), laid out as the
repository's ``data/`` (see its README).
"""

from __future__ import annotations

import os
from pathlib import Path

from fasb_tl.data.records import DatasetError

ENV_VAR = "FASB_TL_DATA"
PACKAGED_DATASETS = ("truthfulqa",)
_PACKAGE_FILES = Path(__file__).resolve().parent / "files"
_CHECKOUT_ROOT = Path(__file__).resolve().parents[3]


def repository_data_dir() -> Path | None:
    """The ``data/`` folder of the source checkout fasb_tl runs from, or None for an installed package."""
    folder = _CHECKOUT_ROOT / "data"
    is_checkout = (_CHECKOUT_ROOT / "pyproject.toml").is_file() and (folder / "SHA256SUMS").is_file()
    return folder if is_checkout else None


def packaged_data_dir() -> Path:
    """The folder of the data files installed with the package (TruthfulQA only)."""
    return _PACKAGE_FILES


def _places(name: str, data_dir: str | os.PathLike | None) -> list[tuple[str, Path | None]]:
    """The (description, folder) pairs searched for dataset ``name``, in order; None marks a place that
    does not exist on this installation."""
    if data_dir is not None:
        return [(f"data_dir={str(data_dir)!r}", Path(data_dir).expanduser())]
    if os.environ.get(ENV_VAR):
        return [(f"${ENV_VAR}={os.environ[ENV_VAR]!r}", Path(os.environ[ENV_VAR]).expanduser())]
    places: list[tuple[str, Path | None]] = [
        (f"the repository's data folder ({_CHECKOUT_ROOT / 'data'})", repository_data_dir())
    ]
    if name in PACKAGED_DATASETS:
        places.append(("the copy inside the installed package", packaged_data_dir()))
    return places


def dataset_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding dataset ``name`` (``"truthfulqa"``, ``"copa"``, ``"nli"``, ...), found by the lookup
    order above; a :class:`DatasetError` names every place searched when none has it."""
    looked = []
    for description, root in _places(name, data_dir):
        if root is None:
            looked.append(f"{description}: not there (fasb_tl is not running from a checkout)")
        elif not root.is_dir():
            looked.append(f"{description}: {root} is not a folder")
        elif not (root / name).is_dir():
            looked.append(f"{description}: {root} has no {name}/ subfolder")
        else:
            return root / name
    hint = (
        "pass data_dir=... (--data-dir) or set $FASB_TL_DATA to a folder laid out as the repository's data/ "
        "(see data/README.md there), or run from a clone of the repository, which ships every dataset"
    )
    if name in PACKAGED_DATASETS:
        hint += "; online, load_truthfulqa_hub() reads TruthfulQA from the Hugging Face Hub"
    raise DatasetError(f"dataset {name!r} not found. Looked in: " + "; ".join(looked) + f". To fix: {hint}.")


def require_file(folder: Path, name: str) -> Path:
    """``folder / name``, or a clear error naming the missing file."""
    path = folder / name
    if not path.is_file():
        raise DatasetError(f"missing data file {path} (expected {name!r} in {folder})")
    return path
