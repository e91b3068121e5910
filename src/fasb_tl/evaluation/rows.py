"""Result rows: identity and key, skipping rows already stored (resume), and writing the rest.

Every job (TruthfulQA MC, generation and detection, the six tasks) describes its rows as :class:`RowSpec` and
hands them to :func:`run_rows` with the function that computes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fasb_tl._version import __version__
from fasb_tl.evaluation.results import IDENTITY_FIELDS, row_key
from fasb_tl.evaluation.variants import PLAIN, Variant
from fasb_tl.models import model_name

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from fasb_tl.caa import CAAConfig
    from fasb_tl.evaluation.context import EvalContext


def row_identity(
    model: TransformerBridge,
    *,
    task: str,
    method: str,
    config: Any,
    caa: CAAConfig,
    variant: Variant = PLAIN,
    **fields: Any,
) -> dict:
    """The fields that name a row (its key is their hash): task, model, method, ``fields`` (the fold; a supplied
    Steerer's digest as ``steerer``), the variant's fields, the full task config, and the CAA config for CAA
    rows. Plain rows carry no variant fields, rows of fitted Steerers no ``steerer`` and other methods no CAA
    config, so adding any of those kinds of row leaves every other key unchanged.
    Only :data:`~fasb_tl.evaluation.results.IDENTITY_FIELDS` may name a row, so a stored key can be checked."""
    identity = {"task": task, "model": model_name(model), "method": method, **fields, **variant.identity()}
    unknown = sorted(set(identity) - set(IDENTITY_FIELDS))
    if unknown:
        raise ValueError(f"row identity fields must be among {IDENTITY_FIELDS}, got {unknown}")
    identity["config"] = config.identity()
    if method == "caa":
        identity["caa"] = asdict(caa)
    return identity


@dataclass(frozen=True)
class RowSpec:
    """One row to produce: its identity (hence its key), its variant, and the scoring or generation config
    that computes it (None where the job needs none)."""

    identity: dict
    variant: Variant = PLAIN
    config: Any = None
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", row_key(**self.identity))

    @property
    def tag(self) -> str:
        """A name unique among the rows of one job (method, protocol and variant, e.g. ``fasb/paper~random1``)."""
        return self.identity["method"] + self.variant.suffix()


RowFields = Callable[[RowSpec], dict]


def run_rows(
    ctx: EvalContext,
    specs: Sequence[RowSpec],
    compute: Callable[[list[RowSpec], Path], RowFields],
) -> None:
    """Produce the rows of ``specs`` that are not stored yet, all from one ``compute`` call.

    ``compute(todo, folder)`` runs on every rank (it may use collectives and keep the ranks' finished batches
    in ``folder``); it returns the function that gives a row's result fields, which only rank 0 calls (it may
    judge answers or write files). Rank 0 writes each row; every rank keeps it, so all skip the same work.
    """
    todo = [spec for spec in specs if not ctx.store.has(spec.key)]
    if not todo:
        return
    start = time.perf_counter()
    keys = [spec.key for spec in todo]
    result_fields = compute(todo, ctx.rows.shard_folder(keys))
    for spec in todo:
        row = None
        if ctx.shard.is_main:
            row = {**spec.identity, "key": spec.key, **result_fields(spec)}
            row.update(seconds=time.perf_counter() - start, version=__version__)
        ctx.rows.commit(row)
    ctx.rows.finish(keys)
