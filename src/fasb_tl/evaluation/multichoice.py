"""The six multiple-choice tasks (COPA, StoryCloze, NLI, MMLU, SST-2, Winogrande) under none / ITI / FASB.

FASB's code has no multiple-choice pipeline, so this protocol is ours, stated here in full: for each task a
seeded sample of ``n_pool`` items from its pool split (disjoint from the evaluation items) gives the probe
bank, one prompt per option ``context + option`` labelled 1 for the gold option and 0 otherwise, read at the
last token; items are split 80/20 into probe training and head-selection sets; the tuning bank for sigma is
every pool prompt, unlabelled. Accuracy is the share of ``n_eval`` seeded evaluation items whose gold option
has the highest answer log-likelihood, scored with :func:`fasb_tl.scoring.score_choices_many`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fasb_tl._version import __version__
from fasb_tl.activations import collect_head_activations
from fasb_tl.caa import CAAConfig, ResidualSteerer, fit_caa
from fasb_tl.distributed import Shard, current_shard
from fasb_tl.evaluation.multichoice_data import ChoiceRecord, load_task, sample
from fasb_tl.evaluation.results import ResultStore, row_key
from fasb_tl.evaluation.sharding import (
    ShardedRows,
    load_or_compute,
    load_steerer_if_valid,
    sharded_score_choices,
)
from fasb_tl.evaluation.variants import PLAIN, Variant
from fasb_tl.models import model_name
from fasb_tl.scoring import ScoringConfig, named_configs
from fasb_tl.steering import (
    Steerer,
    control_steerer,
    model_meta,
    steerer_from_activations,
)

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

MC_TASK_METHODS = ("none", "iti", "caa", "question", "fasb")


@dataclass(frozen=True)
class MultiChoiceConfig:
    """Sizes and steering settings; defaults finish all six tasks in about half an hour on 2 CPU cores."""

    n_pool: int = 300
    n_eval: int | None = 200
    val_fraction: float = 0.2
    seed: int = 42
    k: int = 24
    direction: str = "mass_mean"
    backend: str = "torch"
    alpha: float = 15.0
    threshold: float = 0.6
    back_steps: int = 10
    batch_size: int = 16


def option_bank(records: Sequence[ChoiceRecord]) -> tuple[list[str], torch.Tensor, np.ndarray]:
    """``context + option`` for every option, labelled 1 for the gold option, with the owning item index."""
    prompts, labels, owners = [], [], []
    for index, record in enumerate(records):
        for j, option in enumerate(record.options):
            prompts.append(record.context + option)
            labels.append(int(j == record.gold))
            owners.append(index)
    return prompts, torch.tensor(labels), np.asarray(owners)


class MultiChoiceEvaluation:
    """One task's probes, Steerer and accuracy rows, resumable through a :class:`ResultStore`."""

    def __init__(
        self,
        model: TransformerBridge,
        task: str,
        config: MultiChoiceConfig,
        out: str | Path,
        data_dir: str | None = None,
        progress: bool = True,
        caa: CAAConfig | None = None,
        shard: Shard | None = None,
        steerer_dir: str | Path | None = None,
    ):
        self.shard = shard or current_shard()
        self.model = model
        self.steerer_dir = Path(steerer_dir) if steerer_dir is not None else Path(out) / "steerers"
        self.task = task
        self.config = config
        self.out = Path(out)
        self.data_dir = data_dir
        self.progress = progress and self.shard.is_main
        self.store = ResultStore(self.out)
        self.rows = ShardedRows(self.store, self.shard)
        self.caa = caa or CAAConfig()

    def _identity(self, method: str, variant: Variant = PLAIN) -> dict:
        identity = {
            "task": self.task,
            "model": model_name(self.model),
            "method": method,
            **variant.identity(),
        }
        identity["config"] = asdict(self.config)
        if method == "caa":
            identity["caa"] = asdict(self.caa)
        return identity

    def steerer(self) -> Steerer:
        """The task's Steerer, reused from ``steerers/`` when present, else fitted on the pool and saved."""
        cfg = self.config
        folder = self.steerer_dir / f"{self.task}-{cfg.direction}-k{cfg.k}-pool{cfg.n_pool}"
        return load_or_compute(
            self.shard,
            lambda: load_steerer_if_valid(folder, self.model),
            self._fit_steerer,
            lambda steerer: steerer.save(folder, overwrite=True),
        )

    def _fit_steerer(self) -> Steerer:
        cfg = self.config
        pool = sample(load_task(self.task, "pool", self.data_dir), cfg.n_pool, cfg.seed)
        prompts, labels, owners = option_bank(pool)
        order = np.random.RandomState(cfg.seed).permutation(len(pool))
        n_val = max(1, round(len(pool) * cfg.val_fraction))
        val_items = order[:n_val]
        val = np.isin(owners, val_items)
        acts = collect_head_activations(
            self.model, prompts, batch_size=cfg.batch_size, progress=self.progress, shard=self.shard
        )
        meta = model_meta(
            self.model,
            cfg.direction,
            dataset=self.task,
            split_seed=cfg.seed,
            n_train=len(pool) - n_val,
            n_val=n_val,
        )
        steerer, _ = steerer_from_activations(
            acts[~val],
            labels[~val],
            acts[val],
            labels[val],
            acts,
            meta,
            k=cfg.k,
            backend=cfg.backend,
            seed=cfg.seed,
            progress=self.progress,
        )
        return steerer

    def configs(self, methods: Sequence[str], protocols: Sequence[str]) -> dict[str, ScoringConfig]:
        """Named scoring configs (monitored methods once per protocol)."""
        cfg = self.config
        return named_configs(methods, protocols, cfg.alpha, cfg.threshold, cfg.back_steps)

    def caa_steerer(self) -> ResidualSteerer:
        """The task's CAA vector from the pool's option prompts (gold option = 1)."""
        pool = sample(load_task(self.task, "pool", self.data_dir), self.config.n_pool, self.config.seed)
        prompts, labels, _ = option_bank(pool)
        return fit_caa(
            self.model,
            prompts,
            labels,
            self.caa.layer,
            batch_size=self.config.batch_size,
            progress=self.progress,
            shard=self.shard,
        )

    def run(
        self,
        methods: Sequence[str] = MC_TASK_METHODS,
        protocols: Sequence[str] = ("paper", "question"),
        variants: Sequence[Variant] = (PLAIN,),
    ) -> None:
        """Accuracy of each method (and control variant) on the task's evaluation sample (``caa``: the CAA
        baseline); finished rows are skipped. The calibrated-threshold variant is TruthfulQA-only (these
        tasks have no generation format to calibrate in) and is ignored here."""
        entries = []
        for variant in variants:
            if variant.calibrated:
                continue
            steering = [m for m in methods if m != "caa" and variant.applies_to(m)]
            entries += [(name, variant, c) for name, c in self.configs(steering, protocols).items()]
        self._run_group(entries, self.steerer)
        if "caa" in methods:
            caa = ScoringConfig(method="iti", alpha=self.caa.multiplier)
            self._run_group([("caa", PLAIN, caa)], self.caa_steerer)

    def _run_group(self, entries, get_steerer) -> None:
        todo = {}
        for name, variant, config in entries:
            key = row_key(**self._identity(name, variant))
            if not self.store.has(key):
                todo[name + variant.suffix()] = (name, variant, config, key)
        if not todo:
            return
        start = time.perf_counter()
        items = sample(load_task(self.task, "eval", self.data_dir), self.config.n_eval, self.config.seed)
        steerer = get_steerer() if any(c.method != "none" for _, _, c, _ in todo.values()) else None
        interventions = {
            tag: control_steerer(steerer, variant.control, variant.seed)
            for tag, (_, variant, _, _) in todo.items()
            if variant.control is not None
        }
        keys = [entry[-1] for entry in todo.values()]
        scored = sharded_score_choices(
            self.rows,
            keys,
            self.model,
            [r.context for r in items],
            [list(r.options) for r in items],
            steerer,
            {tag: config for tag, (_, _, config, _) in todo.items()},
            interventions=interventions,
            batch_size=self.config.batch_size,
            progress=self.progress,
        )
        for tag, results in scored.items():
            name, variant, _, key = todo[tag]
            correct = [float(int(r.scores.argmax()) == item.gold) for r, item in zip(results, items)]
            baseline = [float(int(r.unsteered.argmax()) == item.gold) for r, item in zip(results, items)]
            row = self._identity(name, variant)
            row.update(
                key=key,
                n_items=len(items),
                accuracy=float(np.mean(correct)),
                unsteered_accuracy=float(np.mean(baseline)),
                steered_fraction=float(np.mean([t for r in results for t in r.triggered])),
                loglik_change_gold=float(
                    np.mean([float(r.scores[i.gold] - r.unsteered[i.gold]) for r, i in zip(results, items)])
                ),
                per_item={"correct": correct},
                item_ids=[item.id for item in items],
                seconds=time.perf_counter() - start,
                version=__version__,
            )
            self.rows.commit(row)
        self.rows.finish(keys)
