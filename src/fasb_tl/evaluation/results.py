"""A resumable result table: one row per finished unit of work, rewritten atomically after each row.

Rows live in ``results.jsonl`` (the source of truth) with a ``results.csv`` copy for spreadsheets. Every row
carries its key, the full config and the library version. A rerun skips keys already present, so a run
interrupted at any point (Ctrl-C, SIGKILL) resumes without losing or duplicating rows.

Loading trusts nothing: a line that is not a JSON object with a string ``key``, a key seen on an earlier line,
or a key that its row's identity fields (:data:`IDENTITY_FIELDS`) no longer hash to raises
:class:`ResultFileError` naming the file and line; the file is never silently repaired, since it is the record
of finished work. A writer calls :meth:`ResultStore.prepare_for_writing` (holding the folder's lock, see
:func:`fasb_tl.evaluation.sharding.open_result_folder`), which removes the temporary files a killed write left
and rebuilds ``results.csv`` from ``results.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from fasb_tl._io import atomic_write_text, remove_stale_temporaries

RESULTS_FILE = "results.jsonl"
CSV_FILE = "results.csv"

# The fields :func:`fasb_tl.evaluation.rows.row_identity` may give a row (it refuses others). A row's key is
# ``row_key`` over those of them it carries, so the key of every stored row can be checked against its fields.
IDENTITY_FIELDS = ("task", "model", "method", "fold", "config", "caa")
IDENTITY_FIELDS += ("control", "control_seed", "threshold_mode")  # what Variant.identity adds
IDENTITY_FIELDS += ("steerer",)  # the digest of a supplied Steerer (evaluation.supplied)


class ResultFileError(ValueError):
    """A ``results.jsonl`` line that cannot be trusted (not a JSON object, no key, a repeated or wrong key)."""


def row_key(**fields: Any) -> str:
    """A stable key for a unit of work from its identifying fields (order-independent)."""
    payload = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def identity_key(row: dict) -> str | None:
    """The key the row's identity fields give, or None for a row without any (rows not from ``row_identity``)."""
    identity = {name: row[name] for name in IDENTITY_FIELDS if name in row}
    return row_key(**identity) if identity else None


class ResultStore:
    """Rows of one evaluation folder, keyed; ``add`` persists atomically."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / RESULTS_FILE
        self.rows: list[dict] = []
        self._lines: dict[str, int | None] = {}  # key -> line of results.jsonl (None: added in this process)
        if self.path.is_file():
            for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                where = f"{self.path}:{number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ResultFileError(f"{where} is not valid JSON ({err}); fix or delete it") from err
                self._keep(row, where, number)

    def _keep(self, row: Any, where: str, line: int | None) -> None:
        """Check ``row`` (an object with a string key, not stored yet, matching its identity fields), store it."""
        if not isinstance(row, dict):
            raise ResultFileError(f"{where} is a JSON {type(row).__name__}, not a result row (an object)")
        key = row.get("key")
        if not isinstance(key, str):
            raise ResultFileError(f"{where}: a result row needs a string 'key', got {key!r}")
        expected = identity_key(row)
        if expected is not None and expected != key:
            raise ResultFileError(
                f"{where}: key {key} does not match the row's identity fields, which give {expected}: the row "
                "was edited or corrupted; restore it, or delete the line to compute the row again"
            )
        if key in self._lines:
            first = self._lines[key]
            at = f" (line {first})" if first is not None else ""
            raise ResultFileError(f"{where}: row {key} is stored already{at}; delete one of the two")
        self.rows.append(row)
        self._lines[key] = line

    def has(self, key: str) -> bool:
        """Whether a row with ``key`` is already stored."""
        return key in self._lines

    def add(self, row: dict, persist: bool = True) -> None:
        """Store a finished row (it must carry a ``key`` not stored yet, matching its identity fields) and, if
        ``persist``, write the table (in a distributed run only rank 0 writes; the others keep the same rows in
        memory)."""
        self._keep(row, "result row", None)
        if not persist:
            return
        atomic_write_text(
            self.path, "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in self.rows)
        )
        self._write_csv()

    def _write_csv(self) -> None:
        """Make ``results.csv`` the rows' table (none without rows), writing only when it differs."""
        csv = self.folder / CSV_FILE
        if not self.rows:
            csv.unlink(missing_ok=True)
            return
        text = self.frame().to_csv(index=False)
        if not csv.is_file() or csv.read_text(encoding="utf-8") != text:
            atomic_write_text(csv, text)

    def prepare_for_writing(self) -> None:
        """Before a run writes this folder (holding its lock): remove the temporary files that writers of
        ``results.jsonl`` / ``results.csv`` killed on this host left, and rebuild ``results.csv`` from
        ``results.jsonl``."""
        for path in (self.path, self.folder / CSV_FILE):
            remove_stale_temporaries(path)
        self._write_csv()

    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame (nested config flattened to ``config.*`` columns)."""
        return pd.json_normalize(self.rows, sep=".") if self.rows else pd.DataFrame()
