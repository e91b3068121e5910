"""The six multiple-choice tasks (COPA, StoryCloze, NLI, MMLU, SST-2, Winogrande) under none / ITI / FASB.

FASB's code has no multiple-choice pipeline, so this protocol is ours, stated here in full: for each task a
seeded sample of ``n_pool`` items from its pool split (disjoint from the evaluation items) gives the probe
bank, one prompt per option ``context + option`` labelled 1 for the gold option and 0 otherwise, read at the
last token; items are split 80/20 into probe training and head-selection sets; the tuning bank for sigma is
every pool prompt, unlabelled. Accuracy is the share of ``n_eval`` seeded evaluation items whose gold option
has the highest answer log-likelihood, scored with :func:`fasb_tl.scoring.score_choices_many`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from fasb_tl.caa import CAAConfig, ResidualSteerer, fit_caa
from fasb_tl.data import ProbeBank
from fasb_tl.evaluation.artifacts import ArtifactCache, fit_on_bank
from fasb_tl.evaluation.choices import ChoiceQuestions, choice_specs, run_choice_rows, split_head_controls
from fasb_tl.evaluation.context import EvalContext, SteeringSettings
from fasb_tl.evaluation.multichoice_data import ChoiceRecord, load_task, sample
from fasb_tl.evaluation.rows import RowSpec, row_identity
from fasb_tl.evaluation.supplied import check_fitted_for, steerer_digest
from fasb_tl.evaluation.variants import PLAIN, Variant
from fasb_tl.fitting import random_heads
from fasb_tl.scoring import ChoiceScores
from fasb_tl.steering import Steerer

MC_TASK_METHODS = ("none", "iti", "caa", "question", "fasb")


@dataclass(frozen=True)
class MultiChoiceConfig(SteeringSettings):
    """Sizes and steering settings; defaults finish all six tasks in about half an hour on 2 CPU cores."""

    n_pool: int = 300
    n_eval: int | None = 200

    def checks(self) -> dict[str, tuple[bool, str]]:
        """The shared checks and the sizes (a pool of 2 items or more: probes need a training item)."""
        return {
            **super().checks(),
            "n_pool": (self.n_pool >= 2, ">= 2"),
            "n_eval": (self.n_eval is None or self.n_eval >= 1, "None or >= 1"),
        }


def option_bank(records: Sequence[ChoiceRecord]) -> ProbeBank:
    """``context + option`` for every option, labelled 1 for the gold option, grouped by item."""
    prompts, labels, groups = [], [], []
    for index, record in enumerate(records):
        for j, option in enumerate(record.options):
            prompts.append(record.context + option)
            labels.append(int(j == record.gold))
            groups.append(index)
    return ProbeBank(
        prompts, torch.tensor(labels, dtype=torch.int64), torch.tensor(groups, dtype=torch.int64)
    )


def run_multichoice(
    ctx: EvalContext,
    *,
    task: str,
    config: MultiChoiceConfig,
    caa: CAAConfig | None = None,
    methods: Sequence[str] = MC_TASK_METHODS,
    protocols: Sequence[str] = ("paper", "question"),
    variants: Sequence[Variant] = (PLAIN,),
    steerer: Steerer | None = None,
) -> None:
    """Accuracy rows of each method (and control variant) on the task's evaluation sample (``caa``: the CAA
    baseline); finished rows are skipped. The calibrated-threshold variant is TruthfulQA-only (these tasks
    have no generation format to calibrate in) and is ignored here. A supplied ``steerer``, fitted on this
    task's pool, replaces the fitted one, and its digest names every row
    (:mod:`fasb_tl.evaluation.supplied`)."""
    caa = caa or CAAConfig()
    artifacts = ArtifactCache(ctx)
    supplied: dict[str, str] = {}
    if steerer is not None:
        check_fitted_for(steerer, task, config)
        supplied = {"steerer": steerer_digest(steerer)}

    def identity(method: str, variant: Variant) -> dict:
        return row_identity(
            ctx.model, task=task, method=method, config=config, caa=caa, variant=variant, **supplied
        )

    @cache
    def pool_bank() -> tuple[ProbeBank, torch.Tensor]:
        """The pool's option bank and which of its prompts hold out items for head selection."""
        items = sample(load_task(task, "pool", ctx.data_dir), config.n_pool, config.seed)
        bank = option_bank(items)
        n_val = max(1, round(len(items) * config.val_fraction))
        val_items = torch.from_numpy(np.random.RandomState(config.seed).permutation(len(items))[:n_val])
        return bank, torch.isin(bank.groups, val_items)

    def steerer_name() -> str:
        bank, is_val = pool_bank()
        label = f"{task}-{config.direction}-k{config.k}-pool{config.n_pool}"
        return artifacts.name(label, config, bank.prompts, bank.labels, is_val)

    def fit(heads: torch.Tensor | None = None) -> Steerer:
        bank, is_val = pool_bank()
        return fit_on_bank(ctx, bank, is_val, config, dataset=task, heads=heads)

    def random_heads_steerer(seed: int) -> Steerer:
        bank, is_val = pool_bank()
        label = f"{task}-{config.direction}-k{config.k}-pool{config.n_pool}-random_heads{seed}"
        name = artifacts.name(label, config, bank.prompts, bank.labels, is_val)
        shape = int(ctx.model.cfg.n_layers), int(ctx.model.cfg.n_heads)
        return artifacts.steerer(name, lambda: fit(random_heads(*shape, config.k, seed)))

    def fit_caa_vector() -> ResidualSteerer:
        bank, _ = pool_bank()
        return fit_caa(
            ctx.model,
            bank.prompts,
            bank.labels,
            caa.layer,
            batch_size=config.batch_size,
            progress=ctx.progress,
            shard=ctx.shard,
        )

    steered, caa_rows = choice_specs(
        identity, methods, protocols, [v for v in variants if not v.calibrated], config, caa
    )
    own, by_seed = split_head_controls(steered)
    groups = [
        (own, lambda: steerer if steerer is not None else artifacts.steerer(steerer_name(), fit)),
        *[(specs, lambda seed=seed: random_heads_steerer(seed)) for seed, specs in by_seed.items()],
        (caa_rows, lambda: artifacts.caa(task, fit_caa_vector)),
    ]
    for specs, intervention in groups:
        run_choice_rows(
            ctx,
            specs,
            questions=lambda: _accuracy_questions(ctx, task, config),
            steerer=intervention,
            batch_size=config.batch_size,
        )


def _accuracy_questions(ctx: EvalContext, task: str, config: MultiChoiceConfig) -> ChoiceQuestions:
    items = sample(load_task(task, "eval", ctx.data_dir), config.n_eval, config.seed)

    def fields(spec: RowSpec, results: list[ChoiceScores]) -> dict:
        correct = [float(int(r.scores.argmax()) == item.gold) for r, item in zip(results, items)]
        baseline = [float(int(r.unsteered.argmax()) == item.gold) for r, item in zip(results, items)]
        return {
            "n_items": len(items),
            "accuracy": float(np.mean(correct)),
            "unsteered_accuracy": float(np.mean(baseline)),
            "steered_fraction": float(np.mean([t for r in results for t in r.triggered])),
            "loglik_change_gold": float(
                np.mean([float(r.scores[i.gold] - r.unsteered[i.gold]) for r, i in zip(results, items)])
            ),
            "per_item": {"correct": correct},
            "item_ids": [item.id for item in items],
        }

    return ChoiceQuestions([r.context for r in items], [list(r.options) for r in items], fields)
