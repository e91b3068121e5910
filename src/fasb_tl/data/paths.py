"""Where the evaluation data folder is (``$FASB_TL_DATA``, else ``../shared/data``)."""

from __future__ import annotations

import os
from pathlib import Path

from fasb_tl.data.records import DatasetError

DEFAULT_DATA_DIR = Path("..") / "shared" / "data"
_REPO_ROOT = Path(__file__).resolve().parents[3]


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: ``data_dir`` if given, else ``$FASB_TL_DATA``, else ``../shared/data``.

    The default is tried relative to the working directory, then relative to a source checkout, so notebooks
    and scripts in subfolders find it too.
    """
    if data_dir is not None:
        candidates = [Path(data_dir).expanduser()]
    elif os.environ.get("FASB_TL_DATA"):
        candidates = [Path(os.environ["FASB_TL_DATA"]).expanduser()]
    else:
        candidates = [DEFAULT_DATA_DIR, _REPO_ROOT / DEFAULT_DATA_DIR]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c.resolve()) for c in candidates)
    raise DatasetError(
        f"data folder not found (tried {tried}); pass data_dir=..., set FASB_TL_DATA, "
        "or run from a checkout next to shared/data"
    )


def require_file(folder: Path, name: str) -> Path:
    """``folder / name``, or a clear error naming the missing file."""
    path = folder / name
    if not path.is_file():
        raise DatasetError(f"missing data file {path} (expected {name!r} in {folder})")
    return path
