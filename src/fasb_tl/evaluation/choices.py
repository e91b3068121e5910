"""Rows scored by answer log-likelihood, for TruthfulQA MC and the six tasks alike.

A job lists its rows with :func:`choice_specs` and scores each group with :func:`run_choice_rows`: every row
of a group shares one unsteered pass (:func:`~fasb_tl.scoring.score_choices_many`), and control variants
steer with a control Steerer while the real probes decide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from fasb_tl.distributed import sharded_map
from fasb_tl.evaluation.rows import RowSpec, run_rows
from fasb_tl.evaluation.variants import PLAIN, Variant
from fasb_tl.fitting import control_steerer
from fasb_tl.scoring import ChoiceScores, ScoringConfig, named_configs, score_choices_many
from fasb_tl.steering import Steerer

if TYPE_CHECKING:
    from pathlib import Path

    from fasb_tl.caa import CAAConfig, ResidualSteerer
    from fasb_tl.evaluation.context import EvalContext, SteeringSettings
    from fasb_tl.prefix import PrefixCache


@dataclass(frozen=True)
class ChoiceQuestions:
    """What one group of rows scores, and how one row's scores become its result fields."""

    contexts: list[str]
    options: list[list[str]]
    fields: Callable[[RowSpec, list[ChoiceScores]], dict]


def choice_specs(
    identity: Callable[[str, Variant], dict],
    methods: Sequence[str],
    protocols: Sequence[str],
    variants: Sequence[Variant],
    config: SteeringSettings,
    caa: CAAConfig,
) -> tuple[list[RowSpec], list[RowSpec]]:
    """The rows of ``methods`` under each variant that applies (monitored methods once per protocol, with the
    task ``config``'s alpha, threshold and back_steps), then the CAA rows, a group of their own because
    another steerer acts there. ``identity(method, variant)`` names a row."""
    steered = []
    for variant in variants:
        names = [m for m in methods if m != "caa" and variant.applies_to(m)]
        configs = named_configs(names, protocols, config.alpha, config.threshold, config.back_steps)
        steered += [RowSpec(identity(name, variant), variant, scoring) for name, scoring in configs.items()]
    caa_rows = []
    if "caa" in methods:
        caa_rows.append(
            RowSpec(identity("caa", PLAIN), PLAIN, ScoringConfig(method="iti", alpha=caa.multiplier))
        )
    return steered, caa_rows


def split_head_controls(specs: Sequence[RowSpec]) -> tuple[list[RowSpec], dict[int, list[RowSpec]]]:
    """The rows that steer with the fitted Steerer (or a direction control of it), and the random-heads rows
    by seed: each seed's rows are scored with their own Steerer, whose probes also decide."""
    own = [spec for spec in specs if not spec.variant.changes_heads]
    by_seed: dict[int, list[RowSpec]] = {}
    for spec in specs:
        if spec.variant.changes_heads:
            by_seed.setdefault(spec.variant.seed, []).append(spec)
    return own, by_seed


def run_choice_rows(
    ctx: EvalContext,
    specs: Sequence[RowSpec],
    *,
    questions: Callable[[], ChoiceQuestions],
    steerer: Callable[[], Steerer | ResidualSteerer],
    threshold: Callable[[], float] | None = None,
    prefix: Callable[[], PrefixCache] | None = None,
    batch_size: int,
) -> None:
    """Score the rows of ``specs`` not stored yet in one shared pass. ``steerer()`` (asked only when some row
    steers) decides and steers; calibrated variants take ``threshold()``."""

    def compute(todo: list[RowSpec], folder: Path):
        asked = questions()
        acting = steerer() if any(spec.config.method != "none" for spec in todo) else None
        configs, interventions = {}, {}
        for spec in todo:
            configs[spec.tag] = spec.config
            if spec.variant.calibrated:
                if threshold is None:
                    raise ValueError(
                        f"row {spec.tag} has a calibrated threshold but no calibration was given"
                    )
                configs[spec.tag] = replace(spec.config, threshold=threshold())
            if spec.variant.control is not None and not spec.variant.changes_heads:
                interventions[spec.tag] = control_steerer(acting, spec.variant.control, spec.variant.seed)
        prefix_cache = prefix() if prefix is not None else None

        def score(indices: list[int]) -> list[dict[str, ChoiceScores]]:
            scored = score_choices_many(
                ctx.model,
                [asked.contexts[i] for i in indices],
                [asked.options[i] for i in indices],
                acting,
                configs,
                prefix=prefix_cache,
                interventions=interventions,
                batch_size=batch_size,
                progress=ctx.progress,
            )
            return [{tag: scored[tag][j] for tag in configs} for j in range(len(indices))]

        # The questions are split over the ranks in batches; every rank receives every question's scores.
        per_question = sharded_map(
            ctx.shard,
            list(range(len(asked.contexts))),
            batch_size,
            score,
            store=folder,
            encode=lambda item: {tag: scores.to_dict() for tag, scores in item.items()},
            decode=lambda item: {tag: ChoiceScores.from_dict(value) for tag, value in item.items()},
        )
        scored = {tag: [item[tag] for item in per_question] for tag in configs}
        return lambda spec: asked.fields(spec, scored[spec.tag])

    run_rows(ctx, specs, compute)
