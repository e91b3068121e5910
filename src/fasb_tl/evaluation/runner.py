"""One entry point behind ``fasb eval`` and ``fasb sweep``: run tasks x methods into a result folder."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from fasb_tl.caa import CAAConfig
from fasb_tl.data import load_truthfulqa
from fasb_tl.distributed import Shard, current_shard
from fasb_tl.evaluation.context import EvalContext
from fasb_tl.evaluation.detection import run_detection
from fasb_tl.evaluation.judges import DEFAULT_JUDGES, JUDGE_NAMES, Judge, make_judges
from fasb_tl.evaluation.multichoice import MultiChoiceConfig, run_multichoice
from fasb_tl.evaluation.multichoice_data import ALTERNATIVE_TASKS, TASKS
from fasb_tl.evaluation.sharding import open_result_folder
from fasb_tl.evaluation.supplied import SuppliedSteererError, check_fitted_for, settings_for
from fasb_tl.evaluation.truthfulqa import (
    TruthfulQAConfig,
    TruthfulQAFolds,
    fold_splits,
    run_mc,
    supplied_fold,
)
from fasb_tl.evaluation.truthfulqa_generation import run_generation
from fasb_tl.evaluation.variants import Variant, plan_variants
from fasb_tl.methods import ALL_METHODS, check_methods
from fasb_tl.models import model_name, resolve_dtype
from fasb_tl.scoring import PROTOCOL_METHODS, PROTOCOLS
from fasb_tl.steering import Steerer

if TYPE_CHECKING:
    import torch
    from transformer_lens.model_bridge import TransformerBridge

ALL_TASKS = ("truthfulqa", *TASKS)
SWEEPABLE = ("alpha", "threshold", "back_steps", "k")


@dataclass
class EvalPlan:
    """What ``fasb eval`` runs: tasks, methods, protocols and the per-task configs."""

    tasks: Sequence[str]
    methods: Sequence[str]
    protocols: Sequence[str] = ("paper", "question")
    truthfulqa: TruthfulQAConfig = field(default_factory=TruthfulQAConfig)
    multichoice: MultiChoiceConfig = field(default_factory=MultiChoiceConfig)
    caa: CAAConfig = field(default_factory=CAAConfig)
    judges: Sequence[str] = DEFAULT_JUDGES
    generation: bool = True
    mc: bool = True
    detection: bool = False
    controls: Sequence[str] = ()
    n_random: int = 3
    thresholds: Sequence[str] = ("fixed",)

    def __post_init__(self) -> None:
        # Every bad or empty value fails now, before a model is loaded, not hours later; the task configs
        # check their own settings when they are made (each point of a sweep too).
        known = (*ALL_TASKS, *ALTERNATIVE_TASKS)
        unknown = [t for t in self.tasks if t not in known]
        if unknown or not self.tasks:
            raise ValueError(f"unknown task(s) {unknown or 'none given'}: expected some of {known} or 'all'")
        if not self.methods:
            raise ValueError(f"no methods given: expected some of {ALL_METHODS}")
        check_methods(self.methods)
        check_methods(self.protocols, PROTOCOLS, "protocols")
        if not self.protocols and any(m in PROTOCOL_METHODS for m in self.methods):
            raise ValueError(f"no protocols for the monitored methods: expected some of {PROTOCOLS}")
        if [j for j in self.judges if j not in JUDGE_NAMES]:
            raise ValueError(f"unknown judge(s) in {list(self.judges)}: expected some of {JUDGE_NAMES}")
        if "truthfulqa" in self.tasks and not (self.mc or self.generation or self.detection):
            raise ValueError(
                "TruthfulQA has nothing to run: mc and generation are off (--no-mc, --no-generation) and "
                "detection is not on (--detection)"
            )
        plan_variants(self.controls, self.n_random, self.thresholds)

    def model_problems(self, model: TransformerBridge) -> dict[str, str]:
        """The settings that do not fit ``model`` (``k``, ``caa_layer``), each with what it expects."""
        cfg, problems = model.cfg, {}
        heads, layer = int(cfg.n_layers) * int(cfg.n_heads), self.caa.layer
        k = max(self.truthfulqa.k if task == "truthfulqa" else self.multichoice.k for task in self.tasks)
        if k > heads:
            problems["k"] = f"expected K <= n_layers x n_heads = {heads} of {model_name(model)}, got {k}"
        if layer is not None and not 0 <= layer < int(cfg.n_layers):
            problems["caa_layer"] = f"expected a layer in [0, {int(cfg.n_layers) - 1}], got {layer}"
        return problems

    @property
    def variants(self) -> list[Variant]:
        """The plain methods plus the requested controls and threshold modes."""
        return plan_variants(self.controls, self.n_random, self.thresholds)

    def with_steerer(self, steerer: Steerer) -> EvalPlan:
        """This plan with the K and direction of a supplied ``steerer`` in both task configs."""
        return replace(
            self,
            truthfulqa=settings_for(self.truthfulqa, steerer),
            multichoice=settings_for(self.multichoice, steerer),
        )

    def check_steerer(self, steerer: Steerer, data_dir: str | None = None) -> None:
        """Raise :class:`~fasb_tl.evaluation.supplied.SuppliedSteererError` unless ``steerer`` can be evaluated
        by this plan without mixing results: one task, the one it was fitted for (for TruthfulQA, with this
        plan's split), with its K and direction (see :mod:`fasb_tl.evaluation.supplied`)."""
        if len(self.tasks) != 1:
            raise SuppliedSteererError(
                f"a supplied Steerer runs only the task it was fitted for ({steerer.meta.dataset!r}), got tasks "
                f"{list(self.tasks)}"
            )
        (task,) = self.tasks
        if task == "truthfulqa":
            supplied_fold(
                steerer, self.truthfulqa, fold_splits(len(load_truthfulqa(data_dir)), self.truthfulqa)
            )
        else:
            check_fitted_for(steerer, task, self.multichoice)


def run_plan(
    model: TransformerBridge,
    plan: EvalPlan,
    out: str | Path,
    *,
    data_dir: str | None = None,
    progress: bool = True,
    shard: Shard | None = None,
    steerer_dir: str | Path | None = None,
    steerer: Steerer | None = None,
    judge_device: str | None = None,
    judge_dtype: torch.dtype | str | None = None,
) -> None:
    """Run every task of ``plan`` into ``out``; rows already there are skipped (resume). With a distributed
    ``shard`` (default: the initialised process group, if any) the ranks split the work and rank 0 writes.
    Fitted Steerers are kept in ``steerer_dir`` (default ``out/steerers``), so result folders can share them.
    A supplied ``steerer`` is evaluated instead of fitted ones, under :meth:`EvalPlan.check_steerer` (use
    :meth:`EvalPlan.with_steerer` for its K and direction) and on ``model`` only. The allenai judges load on
    ``judge_device`` in ``judge_dtype`` (default: where the model's first parameter is, in its dtype).
    The run holds ``out`` throughout (:func:`~fasb_tl.evaluation.sharding.open_result_folder`): a second run
    into the same folder is refused before any work, so two runs never overwrite each other's rows."""
    shard = shard or current_shard()
    with open_result_folder(Path(out), shard):
        if steerer is not None:
            plan.check_steerer(steerer, data_dir)
            steerer.check_model(model)
        problems = plan.model_problems(model)
        if problems:
            raise ValueError("; ".join(f"{name}: {problem}" for name, problem in problems.items()))
        first = next(model.parameters())
        placement = {
            "device": judge_device or str(first.device),
            "dtype": resolve_dtype(judge_dtype) if judge_dtype is not None else first.dtype,
        }
        _run_tasks(
            EvalContext.create(
                model, out, shard=shard, progress=progress, steerer_dir=steerer_dir, data_dir=data_dir
            ),
            plan,
            data_dir,
            steerer=steerer,
            judges=lambda: make_judges(plan.judges, **placement),
        )


def _run_tasks(
    ctx: EvalContext,
    plan: EvalPlan,
    data_dir: str | None,
    *,
    steerer: Steerer | None,
    judges: Callable[[], list[Judge]],
) -> None:
    """Each task of ``plan`` into ``ctx``'s folder; TruthfulQA's detection, then MC, then generation."""
    for task in plan.tasks:
        # The ranks start each task together, after rank 0 has written the previous task's rows.
        ctx.shard.barrier()
        if task != "truthfulqa":
            run_multichoice(
                ctx,
                task=task,
                config=plan.multichoice,
                caa=plan.caa,
                methods=plan.methods,
                protocols=plan.protocols,
                variants=plan.variants,
                steerer=steerer,
            )
            continue
        records = load_truthfulqa(data_dir)
        folds = TruthfulQAFolds(ctx, records=records, config=plan.truthfulqa, caa=plan.caa, steerer=steerer)
        if plan.detection:
            run_detection(folds)
        if plan.mc:
            run_mc(folds, methods=plan.methods, protocols=plan.protocols, variants=plan.variants)
        if plan.generation:
            run_generation(folds, judges=judges(), methods=plan.methods, variants=plan.variants)


def sweep_plans(plan: EvalPlan, grid: dict[str, Sequence[float]]) -> list[EvalPlan]:
    """One plan per point of ``grid`` (over alpha, threshold, back_steps, k), applied to both task configs."""
    unknown = [name for name in grid if name not in SWEEPABLE]
    if unknown:
        raise ValueError(f"cannot sweep {unknown}: sweepable settings are {SWEEPABLE}")
    names = list(grid)
    plans = []
    for values in itertools.product(*(grid[n] for n in names)):
        changes = dict(zip(names, values))
        plans.append(
            replace(
                plan,
                truthfulqa=replace(plan.truthfulqa, **changes),
                multichoice=replace(plan.multichoice, **changes),
            )
        )
    return plans
