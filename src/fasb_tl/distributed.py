"""Data-parallel evaluation with ``torch.distributed``: deterministic shards, per-rank resumable files, exact merge.

Launch any ``fasb eval`` / ``fasb sweep`` under torchrun (``torchrun --nproc-per-node N -m fasb_tl.cli eval
...``); backend ``nccl`` on GPUs, ``gloo`` on CPUs. Work is split in whole batches: batch ``b`` of the
single-process batching belongs to rank ``b % world_size``, so every batch has the composition it has in one
process and the merged results equal a single process's, not merely within float noise. When a rank has
finished its share of a row group it saves it in ``shards/<row group>/rank<r>-of-<w>.json`` before the
merge, so after a crash only the ranks that had not finished redo their share; rank 0 writes every result
row, the other ranks only keep them in memory. The result folder must be on a file system every rank sees.
A shard file carries the SHA-256 of its payload; one that is unreadable or fails its checksum is a cache
entry gone bad, so the rank warns (naming the file) and computes its share again.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from fasb_tl._io import atomic_write_text

# Rank 0 alone judges answers and writes results while the others wait in a collective; the backends'
# defaults (10 min for nccl, 30 for gloo) are too short for a 7B judge model on a few hundred answers.
COLLECTIVE_TIMEOUT = timedelta(hours=3)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class Shard:
    """This process's place in the job: ``rank`` of ``world_size`` (``Shard()`` is a single process)."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size); got rank {self.rank} of {self.world_size}")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def batches(self, n_items: int, batch_size: int) -> list[range]:
        """The item ranges of the batches this rank owns (batch ``b`` goes to rank ``b % world_size``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        starts = range(0, n_items, batch_size)
        return [
            range(start, min(start + batch_size, n_items))
            for index, start in enumerate(starts)
            if index % self.world_size == self.rank
        ]

    def barrier(self) -> None:
        """Wait for every rank (a no-op in a single process)."""
        if self.distributed:
            dist.barrier()

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (the other ranks' ``value`` is ignored)."""
        if not self.distributed:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, local: dict[int, Any]) -> dict[int, Any]:
        """The union of every rank's ``{item index: result}`` on every rank."""
        if not self.distributed:
            return dict(local)
        pieces: list[dict[int, Any] | None] = [None] * self.world_size
        dist.all_gather_object(pieces, local)
        merged: dict[int, Any] = {}
        for piece in pieces:
            merged.update(piece or {})
        return merged


def current_shard() -> Shard:
    """The shard of this process: from the initialised process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


def init_from_env(backend: str | None = None, timeout: timedelta = COLLECTIVE_TIMEOUT) -> Shard:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1 in the environment); otherwise a no-op.

    ``backend`` defaults to ``nccl`` when CUDA is available, else ``gloo``. With ``nccl`` each rank uses the
    GPU ``LOCAL_RANK``. ``timeout`` bounds every collective wait.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timeout)
    return current_shard()


def sharded_map(
    shard: Shard,
    items: Sequence[Item],
    batch_size: int,
    compute: Callable[[list[Item]], list[Result]],
    *,
    store: Path | None = None,
    encode: Callable[[Result], Any] = lambda result: result,
    decode: Callable[[Any], Result] = lambda value: value,
) -> list[Result]:
    """``compute`` over ``items`` in batches of ``batch_size``, each rank doing its own batches, merged in item
    order on every rank.

    With ``store`` (a folder) and more than one rank, each rank saves its results once it has all of them,
    JSON-encoded by ``encode``, as ``store/rank<r>-of-<w>.json``, and reuses that file when it is already
    there (resume).
    In a single process ``compute`` runs once over all items, batching left to it.
    """
    if not shard.distributed:
        return compute(list(items))
    path = store / f"rank{shard.rank}-of-{shard.world_size}.json" if store is not None else None
    stored = _read_shard(path) if path is not None and path.is_file() else None
    if stored is not None:
        local = {int(i): decode(v) for i, v in stored.items()}
    else:
        local = {}
        for batch in shard.batches(len(items), batch_size):
            for index, result in zip(batch, compute([items[i] for i in batch])):
                local[index] = result
        if path is not None:
            atomic_write_text(path, _shard_text({i: encode(r) for i, r in local.items()}))
    merged = shard.gather(local)
    if sorted(merged) != list(range(len(items))):
        raise RuntimeError(f"shards returned items {sorted(merged)[:10]}... for {len(items)} inputs")
    return [merged[i] for i in range(len(items))]


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _shard_text(payload: dict) -> str:
    """A shard file: the JSON payload as text and its SHA-256."""
    body = json.dumps(payload)
    return json.dumps({"sha256": _digest(body), "payload": body})


def _read_shard(path: Path) -> dict | None:
    """The payload of the shard file ``path``, or None (with a warning naming it) when it is unreadable, not a
    shard file, or fails its checksum: the caller then computes that share again and overwrites the file."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        stored, problem = None, f"unreadable: {err}"
    else:
        problem = _shard_problem(stored)
    if problem is None:
        return json.loads(stored["payload"])
    warnings.warn(
        f"ignoring the shard file {path} ({problem}); computing this rank's share again", stacklevel=3
    )
    return None


def _shard_problem(stored: Any) -> str | None:
    """Why the parsed shard file ``stored`` cannot be used, or None."""
    if not isinstance(stored, dict) or not isinstance(stored.get("payload"), str):
        return "not a shard file with a checksum"
    if _digest(stored["payload"]) != stored.get("sha256"):
        return "its SHA-256 does not match its payload"
    return None
