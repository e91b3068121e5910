"""A resumable result table: one row per finished unit of work, rewritten atomically after each row.

Rows live in ``results.jsonl`` (the source of truth) with a ``results.csv`` copy for spreadsheets. Every row
carries its key, the full config and the library version. A rerun skips keys already present, so a run
interrupted at any point (Ctrl-C, SIGKILL) resumes without losing or duplicating rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from fasb_tl._io import atomic_write_text

RESULTS_FILE = "results.jsonl"


def row_key(**fields: Any) -> str:
    """A stable key for a unit of work from its identifying fields (order-independent)."""
    payload = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


class ResultStore:
    """Rows of one evaluation folder, keyed; ``add`` persists atomically."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / RESULTS_FILE
        self.rows: list[dict] = []
        if self.path.is_file():
            for line_number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    self.rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{self.path}:{line_number} is not valid JSON ({err})") from err
        self._keys = {row["key"] for row in self.rows}

    def has(self, key: str) -> bool:
        """Whether a row with ``key`` is already stored."""
        return key in self._keys

    def add(self, row: dict, persist: bool = True) -> None:
        """Store a finished row (it must carry a ``key`` not stored yet) and, if ``persist``, write the table
        (in a distributed run only rank 0 writes; the others keep the same rows in memory)."""
        if "key" not in row:
            raise ValueError("a result row needs a 'key'")
        if row["key"] in self._keys:
            raise ValueError(f"row {row['key']} is stored already")
        self.rows.append(row)
        self._keys.add(row["key"])
        if not persist:
            return
        atomic_write_text(
            self.path, "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in self.rows)
        )
        atomic_write_text(self.folder / "results.csv", self.frame().to_csv(index=False))

    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame (nested config flattened to ``config.*`` columns)."""
        return pd.json_normalize(self.rows, sep=".") if self.rows else pd.DataFrame()
