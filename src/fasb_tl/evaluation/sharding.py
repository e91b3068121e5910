"""The evaluation side of :mod:`fasb_tl.distributed`: artifacts computed once for all ranks, and rows written by rank 0."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TypeVar

from fasb_tl._io import folder_lock
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


# The result folders this process holds (on every rank alike), so that a run inside a held folder nests.
_HELD: set[Path] = set()


@contextmanager
def open_result_folder(folder: Path, shard: Shard) -> Iterator[None]:
    """Hold the result ``folder`` for a run: rank 0 locks it (:func:`fasb_tl._io.folder_lock`, refused at once
    when another process holds it) and prepares it (:meth:`ResultStore.prepare_for_writing`) before any work;
    the other ranks learn the outcome from rank 0, so they fail with it instead of waiting for it. The lock is
    released when the block ends, however it ends. Only rank 0 writes the folder's rows, so it alone locks.
    Inside a block that holds ``folder`` already (e.g. one around several ``run_plan`` calls) this does nothing."""
    name = folder.resolve()
    if name in _HELD:
        yield
        return
    with ExitStack() as held:
        problem = None
        if shard.is_main:
            try:
                held.enter_context(folder_lock(folder))
                ResultStore(folder).prepare_for_writing()
            except Exception as err:
                if not shard.distributed:
                    raise
                problem = err
        message = shard.from_main(None if problem is None else f"{type(problem).__name__}: {problem}")
        if problem is not None:
            raise problem
        if message is not None:
            raise RuntimeError(f"rank 0 could not open the result folder {folder}: {message}")
        _HELD.add(name)
        held.callback(_HELD.discard, name)
        yield


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
