"""Teacher-forced log-likelihood of answer choices, with the FASB steering decision made by a protocol.

Positions (documented differences from the released code): an answer's tokens start exactly at its first
token after the context, and p_true is read at answer-token positions. Steering starts at the last kept
position and covers every later one: ``iti`` and the ``question`` gate keep nothing, so they steer from the last
context token, i.e. every position whose logits score an answer token. Under ``paper`` a trigger at the
answer's ``n``-th token keeps ``n - back_steps`` tokens (``no_backtrack``: ``n``) and the first check comes at
``n = back_steps + 1`` (or at the last token of a shorter answer), so the scores of answer tokens
``kept + 1 .. m`` are steered and the first answer token's only in answers of at most ``back_steps`` tokens
(``tests/test_fidelity.py`` pins this). The released code starts both at ``len(prompt) + 4`` (meant to skip
``"\\nA: "``, which is 3 Llama tokens), so its first steerable logit scores the second answer token; with
single-token answers (the six multiple-choice tasks) nothing would be steerable there.

Protocols for the steering methods:

* ``paper`` (reproduces the released code): per candidate, one unsteered pass; scan the answer positions,
  skipping the first ``back_steps`` unless it is the last; at the first ``p_true < threshold`` re-run with
  steering on every position from ``max(pos - back_steps, last context position)`` (``fasb``: strength
  ``1 - p_true``; ``fixed``: 1; ``no_backtrack``: from ``pos`` on). The probe sees each candidate's own
  text, so this mixes classification with steering.
* ``question``: one decision per question from the probes at the context's last token; the same steering
  then applies to every candidate of the question.

``none`` scores without hooks and ``iti`` steers every candidate with strength 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from fasb_tl.activations import NonFiniteActivationError, check_prompt_list
from fasb_tl.intervention import Intervention, intervention_problem
from fasb_tl.methods import (
    DECODE_METHODS,
    MONITORING_METHODS,
    MethodSettings,
    decide,
    first_trigger,
    scoring_checks,
)
from fasb_tl.models import check_bridge, check_context, encode
from fasb_tl.prefix import PrefixCache
from fasb_tl.teacher_forcing import Pass, teacher_forced

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

ScoringMethod = Literal["none", "iti", "question", "no_backtrack", "fixed", "fasb"]
SCORING_METHODS = DECODE_METHODS
Protocol = Literal["paper", "question"]
PROTOCOLS = ("paper", "question")
# The monitored methods can decide per candidate (paper) or per question; the others have one way.
PROTOCOL_METHODS = MONITORING_METHODS


class ScoringConfigError(ValueError):
    """A scoring setting outside its valid range."""


@dataclass(frozen=True)
class ScoringConfig(MethodSettings):
    """How choices are scored; ``method="question"`` is FASB under the ``question`` protocol. Checked on
    creation; variants with ``dataclasses.replace(config, alpha=30)``."""

    method: ScoringMethod = "fasb"
    protocol: Protocol = "paper"

    accepted = SCORING_METHODS
    error = ScoringConfigError

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_one_of("protocol", PROTOCOLS)

    @property
    def effective_protocol(self) -> Protocol:
        """The protocol actually used (the question gate always decides per question)."""
        return "question" if self.method == "question" else self.protocol


@dataclass
class ChoiceScores:
    """Scores of one item's options (``scores`` under the method, ``unsteered`` without steering, both
    ``[option]`` float64 log-probabilities), and how strongly each option was steered (0.0: not at all)."""

    scores: Float[Tensor, " option"]
    unsteered: Float[Tensor, " option"]
    strengths: list[float] = field(default_factory=list)

    @property
    def triggered(self) -> list[bool]:
        """Per option: whether it was scored with steering."""
        return [s > 0 for s in self.strengths]

    def to_dict(self) -> dict:
        """JSON-ready values (float64 survives the round trip exactly)."""
        return {
            "scores": self.scores.tolist(),
            "unsteered": self.unsteered.tolist(),
            "strengths": self.strengths,
        }

    @classmethod
    def from_dict(cls, values: dict) -> ChoiceScores:
        return cls(
            scores=torch.tensor(values["scores"], dtype=torch.float64),
            unsteered=torch.tensor(values["unsteered"], dtype=torch.float64),
            strengths=list(values["strengths"]),
        )


def answer_tokens(model: TransformerBridge, context: str, continuation: str) -> tuple[list[int], int]:
    """Token ids of ``context + continuation`` and the index of the first continuation token.

    The answer starts right after the longest token prefix shared with ``context`` alone, so a merge across
    the boundary (e.g. ``"A:" + " yes"``) never counts a context token as answer.
    """
    full = encode(model, context + continuation)
    prefix = encode(model, context)
    start = 0
    while start < min(len(full), len(prefix)) and full[start] == prefix[start]:
        start += 1
    if start >= len(full):
        raise ValueError(f"continuation {continuation!r} adds no token to its context")
    return full, max(start, 1)


def _paper_decision(
    p_true: Tensor, start: int, length: int, config: ScoringConfig
) -> tuple[int, float] | None:
    """The released code's scan over answer positions; returns (first steered position, strength) or None.

    ``p_true[j]`` is the value at position ``start - 1 + j``; answer positions are ``start .. length - 1``, so
    the value checked at the answer's ``n``-th token is ``p_true[n]``. Steering starts at the last kept position
    (the last context token when nothing is kept).
    """
    found = first_trigger(
        config.spec,
        p_true[1 : length - start + 1].tolist(),
        config.back_steps,
        config.threshold,
        scoring_checks,
    )
    if found is None:
        return None
    _, trigger = found
    return start - 1 + trigger.kept, trigger.strength


def _decisions(config: ScoringConfig, items: list[tuple[list[int], int]], base: Pass) -> list:
    """Per pair: ``(first steered position, strength)`` or ``None``, as ``config``'s protocol decides."""
    if config.spec.gate == "never":
        return [None] * len(items)
    if config.spec.gate == "always":
        return [(start - 1, 1.0) for _, start in items]
    if config.effective_protocol == "question":
        decisions = []
        for i, (_, start) in enumerate(items):
            trigger = decide(config.spec, float(base.p_true[i][0]), 0, config.back_steps, config.threshold)
            decisions.append(None if trigger is None else (start - 1 + trigger.kept, trigger.strength))
        return decisions
    return [
        _paper_decision(base.p_true[i], start, len(full), config) for i, (full, start) in enumerate(items)
    ]


def _check_finite(scores: Tensor, where: str) -> None:
    if not torch.isfinite(scores).all():
        raise NonFiniteActivationError(
            f"answer scores {where} are NaN or infinite: the steering is too strong for the model's dtype "
            "(lower alpha) or the model overflows"
        )


def score_choices_many(
    model: TransformerBridge,
    contexts: Sequence[str],
    options: Sequence[Sequence[str]],
    steerer: Intervention | None,
    configs: Mapping[str, ScoringConfig],
    *,
    prefix: PrefixCache | None = None,
    interventions: Mapping[str, Intervention] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, list[ChoiceScores]]:
    """Score every option (a continuation of its context) of every item under each named config.

    One unsteered pass (reading p_true at every answer position) is shared by all configs; each config then
    re-scores only the options it steers. ``prefix``, a cached prefix of the contexts, changes speed only.
    ``interventions`` maps a config name to another intervention that does the steering for it (e.g. a
    :func:`~fasb_tl.fitting.control_steerer`), while ``steerer``'s probes still make every decision.
    """
    check_bridge(model)
    check_prompt_list(contexts, "contexts")
    check_prompt_list(options, "options")
    if len(contexts) != len(options):
        raise ValueError(f"got {len(contexts)} contexts for {len(options)} option lists")
    for name, config in configs.items():
        problem = intervention_problem(config.method, config.spec.gated, steerer)
        if problem is not None:
            raise ScoringConfigError(f"scoring {problem} (config {name!r})")
    owners, items = [], []
    for index, (context, choices) in enumerate(zip(contexts, options)):
        check_prompt_list(choices, f"options of item {index}")
        if len(choices) == 0:
            raise ValueError(f"item {index} has no options")
        for choice in choices:
            full, start = answer_tokens(model, context, choice)
            check_context(model, len(full), what=f"item {index}")
            owners.append(index)
            items.append((full, start))
    monitored = any(c.method not in ("none", "iti") for c in configs.values())
    monitor = steerer if monitored else None
    base = teacher_forced(
        model, items, monitor, [None] * len(items), monitored, prefix, batch_size, "score", progress
    )
    _check_finite(base.scores, "unsteered (the model itself produces them)")
    by_item: list[list[int]] = [[] for _ in contexts]
    for pair, owner in enumerate(owners):
        by_item[owner].append(pair)
    interventions = dict(interventions or {})
    unknown = set(interventions) - set(configs)
    if unknown:
        raise ScoringConfigError(
            f"interventions name configs {sorted(unknown)} that are not in {sorted(configs)}"
        )
    decisions = {name: _decisions(config, items, base) for name, config in configs.items()}
    # Configs that steer the same pairs the same way (e.g. fasb and no_backtrack under the question
    # protocol) share one re-score; the re-scores of every config steered by the same intervention run as
    # one pass, so each question's context is computed once for all of them.
    reruns: dict[tuple, list[int]] = {}
    for name, config in configs.items():
        steered = [i for i, d in enumerate(decisions[name]) if d is not None and config.alpha > 0]
        if steered:
            acting = interventions.get(name, steerer)
            reruns.setdefault((id(acting), config.alpha, tuple(decisions[name])), steered)
    actors = {id(actor): actor for actor in [steerer, *interventions.values()] if actor is not None}
    rescored: dict[tuple, Tensor] = {}
    for acting_id in dict.fromkeys(signature[0] for signature in reruns):
        signatures = [signature for signature in reruns if signature[0] == acting_id]
        pairs = [(signature, i) for signature in signatures for i in reruns[signature]]
        rerun = teacher_forced(
            model,
            [items[i] for _, i in pairs],
            actors[acting_id],
            [(signature[2][i][0], signature[1] * signature[2][i][1]) for signature, i in pairs],
            False,
            prefix,
            batch_size,
            "score (steered)",
            progress,
        )
        for signature in signatures:
            scores = base.scores.clone()
            rows = [row for row, (owner, _) in enumerate(pairs) if owner == signature]
            scores[reruns[signature]] = rerun.scores[rows]
            rescored[signature] = scores
    results = {}
    for name, config in configs.items():
        acting = interventions.get(name, steerer)
        signature = (id(acting), config.alpha, tuple(decisions[name]))
        scores = rescored.get(signature, base.scores)
        _check_finite(scores, f"under config {name!r} (method {config.method!r}, alpha {config.alpha})")
        results[name] = [
            ChoiceScores(
                scores=scores[mine],
                unsteered=base.scores[mine],
                strengths=[d[1] if (d := decisions[name][i]) is not None else 0.0 for i in mine],
            )
            for mine in by_item
        ]
    return results


def score_choices(
    model: TransformerBridge,
    contexts: Sequence[str],
    options: Sequence[Sequence[str]],
    steerer: Intervention | None,
    config: ScoringConfig,
    *,
    prefix: PrefixCache | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> list[ChoiceScores]:
    """Score every option of every item under one ``config`` (see :func:`score_choices_many`): one
    :class:`ChoiceScores` per item, its ``scores`` the summed log-probabilities ``[option]`` of each option's
    tokens after its context. Example::

        (item,) = score_choices(
            model, ["Q: Can pigs fly?\\nA:"], [[" No.", " Yes."]], steerer, ScoringConfig(method="fasb")
        )
        item.scores.argmax(), item.triggered  # the chosen option; which options were steered
    """
    only = {config.method: config}
    results = score_choices_many(
        model, contexts, options, steerer, only, prefix=prefix, batch_size=batch_size, progress=progress
    )
    return results[config.method]


def named_configs(
    methods: Sequence[str], protocols: Sequence[str], alpha: float, threshold: float, back_steps: int
) -> dict[str, ScoringConfig]:
    """One config per method, named ``method``, and per protocol for the monitored methods (``fasb/paper``)."""
    named = {}
    for method in methods:
        for protocol in protocols if method in PROTOCOL_METHODS else ("paper",):
            name = f"{method}/{protocol}" if method in PROTOCOL_METHODS else method
            named[name] = ScoringConfig(
                method=method, protocol=protocol, alpha=alpha, threshold=threshold, back_steps=back_steps
            )
    return named
