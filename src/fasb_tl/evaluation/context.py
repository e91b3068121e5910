"""What every evaluation job shares: the model, the result folder, the ranks and where Steerers are kept."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from fasb_tl.directions import DIRECTION_KINDS
from fasb_tl.distributed import Shard, current_shard
from fasb_tl.evaluation.results import ResultStore
from fasb_tl.evaluation.sharding import ShardedRows
from fasb_tl.methods import MethodSettings
from fasb_tl.probes import BACKENDS, TIE_BREAKS

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@dataclass(frozen=True)
class SteeringSettings:
    """The settings both task configs share: how a Steerer is fitted (val fraction, seed, K, direction, probe
    backend, top-K tie rule, extraction batch size: :attr:`FITTING`) and how it steers (alpha, threshold,
    back_steps)."""

    FITTING: ClassVar[tuple[str, ...]] = (
        "val_fraction",
        "seed",
        "k",
        "direction",
        "backend",
        "tie_break",
        "batch_size",
    )
    # Settings added after rows were first stored, with the value every earlier row was computed with. At that
    # value a setting stays out of row keys and artifact names, so results stored before it existed keep their
    # keys (and stay valid for exactly that value); any other value is part of the key.
    LEGACY_VALUES: ClassVar[dict[str, object]] = {"tie_break": "lowest"}

    val_fraction: float = 0.2
    seed: int = 42
    k: int = 24
    direction: str = "mass_mean"
    backend: str = "torch"
    alpha: float = 15.0
    threshold: float = 0.6
    back_steps: int = 10
    batch_size: int = 16
    tie_break: str = "released"

    def __post_init__(self) -> None:
        MethodSettings(alpha=self.alpha, threshold=self.threshold, back_steps=self.back_steps)  # shared rules
        wrong = [
            f"{name} must be {rule}, got {getattr(self, name)!r}"
            for name, (ok, rule) in self.checks().items()
            if not ok
        ]
        if wrong:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(wrong))

    def identity(self, names: tuple[str, ...] | None = None) -> dict:
        """The settings (all, or ``names``) that decide a result, as stored in row keys and artifact names:
        every field but one at its :attr:`LEGACY_VALUES` value."""
        values = asdict(self) if names is None else {name: getattr(self, name) for name in names}
        return {
            name: value
            for name, value in values.items()
            if not (name in self.LEGACY_VALUES and self.LEGACY_VALUES[name] == value)
        }

    @classmethod
    def from_identity(cls, values: dict) -> SteeringSettings:
        """The settings a stored row's ``config`` describes (a field it leaves out has its legacy value)."""
        return cls(**{**cls.LEGACY_VALUES, **values})

    def checks(self) -> dict[str, tuple[bool, str]]:
        """Each setting's check beyond alpha, threshold and back_steps: (passes, the rule); subclasses add
        theirs."""
        return {
            "val_fraction": (0 < self.val_fraction < 1, "in (0, 1)"),
            "k": (self.k >= 1, ">= 1"),
            "direction": (self.direction in DIRECTION_KINDS, f"one of {DIRECTION_KINDS}"),
            "backend": (self.backend in BACKENDS, f"one of {BACKENDS}"),
            "tie_break": (self.tie_break in TIE_BREAKS, f"one of {TIE_BREAKS}"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
        }


@dataclass(frozen=True)
class EvalContext:
    """Built once by :func:`~fasb_tl.evaluation.runner.run_plan` (or :meth:`create`) and passed to every job."""

    model: TransformerBridge
    out: Path
    rows: ShardedRows
    progress: bool
    steerer_dir: Path
    data_dir: str | None = None

    @classmethod
    def create(
        cls,
        model: TransformerBridge,
        out: str | Path,
        *,
        shard: Shard | None = None,
        progress: bool = True,
        steerer_dir: str | Path | None = None,
        data_dir: str | None = None,
    ) -> EvalContext:
        """The context of a run into ``out``; ``shard`` defaults to the initialised process group, if any, and
        ``steerer_dir`` to ``out/steerers``."""
        shard = shard or current_shard()
        out = Path(out)
        return cls(
            model=model,
            out=out,
            rows=ShardedRows(ResultStore(out), shard),
            # One progress bar per run, not one per rank.
            progress=progress and shard.is_main,
            # A Steerer depends on the splits and the steering settings, not on how many questions are
            # evaluated, so result folders may share one folder of Steerers.
            steerer_dir=Path(steerer_dir) if steerer_dir is not None else out / "steerers",
            data_dir=data_dir,
        )

    @property
    def shard(self) -> Shard:
        return self.rows.shard

    @property
    def store(self) -> ResultStore:
        return self.rows.store
