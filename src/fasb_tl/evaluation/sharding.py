"""The evaluation side of :mod:`fasb_tl.distributed`: artifacts computed once for all ranks, and rows written by rank 0."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from fasb_tl.distributed import Shard
from fasb_tl.evaluation.results import ResultStore, row_key

T = TypeVar("T")


def load_or_compute(
    shard: Shard, load: Callable[[], T | None], compute: Callable[[], T], save: Callable[[T], None]
) -> T:
    """Rank 0's stored artifact (``load``; None when absent) on every rank, else ``compute`` on every rank (its
    collectives need them all) and ``save`` by rank 0, so all ranks take the same path and hold the same value."""
    value = shard.from_main(load() if shard.is_main else None)
    if value is None:
        value = compute()
        if shard.is_main:
            save(value)
        shard.barrier()
    return value


class ShardedRows:
    """A :class:`ResultStore` shared by the ranks of a run: rank 0 writes each row, every rank keeps it in
    memory (so all ranks skip the same finished work), and per-row-group shard folders hold the ranks'
    finished batches until the rows are written."""

    def __init__(self, store: ResultStore, shard: Shard):
        self.store = store
        self.shard = shard

    def shard_folder(self, keys: Sequence[str]) -> Path:
        """Where the ranks keep their finished batches of the rows ``keys``."""
        return self.store.folder / "shards" / row_key(keys=sorted(keys))

    def commit(self, row: dict | None) -> None:
        """Store rank 0's ``row`` (the other ranks pass anything, e.g. None)."""
        row = self.shard.from_main(row)
        self.store.add(row, persist=self.shard.is_main)

    def finish(self, keys: Sequence[str]) -> None:
        """After the rows ``keys`` are committed: wait for every rank, then drop their shard folder."""
        self.shard.barrier()
        if self.shard.distributed and self.shard.is_main:
            shutil.rmtree(self.shard_folder(keys), ignore_errors=True)
