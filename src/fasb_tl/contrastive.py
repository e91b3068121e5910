"""Fitting a :class:`~fasb_tl.steering.Steerer` on your own contrastive pairs, without QA records or splits.

A pair is two texts that differ in the property to steer (a true and a false answer to one question, a kind
and an unkind reply, ...); the probes read hook_z at each text's last token. Texts are strings, or mappings
of fields formatted by a ``template`` (``"Question: {question}\\nAnswer: {answer}"``). Pairs are split
into train and validation whole, so both sides of a pair land on the same side of the split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from fasb_tl.activations import check_prompt_list, collect_head_activations
from fasb_tl.directions import DirectionKind
from fasb_tl.fitting import check_fit_settings, model_meta, steerer_from_activations
from fasb_tl.probes import Backend, TieBreak
from fasb_tl.steering import Steerer

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

PairText = str | Mapping[str, object]


class PairsError(ValueError):
    """Contrastive pairs that cannot be fitted (unequal sides, too few pairs, a text the template cannot fill)."""


def format_texts(texts: Sequence[PairText], template: str | None, side: str) -> list[str]:
    """Each text as a string: a string as given (or filled into ``template``'s ``{text}``), a mapping filled
    into ``template`` by its keys."""
    check_prompt_list(texts, side)
    formatted = []
    for index, text in enumerate(texts):
        if isinstance(text, str) and template is None:
            formatted.append(text)
            continue
        if template is None:
            raise PairsError(f"{side}[{index}] is a {type(text).__name__}: pass template= to format it")
        fields = {"text": text} if isinstance(text, str) else dict(text)
        try:
            formatted.append(template.format(**fields))
        except (KeyError, IndexError) as err:
            raise PairsError(
                f"template {template!r} needs field {err} that {side}[{index}] has not (it has {sorted(fields)})"
            ) from err
    return formatted


def pair_split(n_pairs: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train and validation pair indices, each side non-empty."""
    if not 0 < val_fraction < 1:
        raise PairsError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if n_pairs < 2:
        raise PairsError(f"need at least 2 pairs (one to train, one to validate), got {n_pairs}")
    n_val = min(max(1, round(val_fraction * n_pairs)), n_pairs - 1)
    order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


def fit_steerer_from_pairs(
    model: TransformerBridge,
    positives: Sequence[PairText],
    negatives: Sequence[PairText],
    *,
    template: str | None = None,
    tuning_texts: Sequence[PairText] | None = None,
    k: int = 24,
    direction: DirectionKind = "mass_mean",
    backend: Backend = "torch",
    val_fraction: float = 0.25,
    seed: int = 42,
    tie_break: TieBreak = "released",
    dataset: str = "pairs",
    batch_size: int = 16,
    progress: bool = True,
) -> Steerer:
    """Fit a Steerer whose probes tell ``positives[i]`` from ``negatives[i]`` (``p_true`` is the probability
    of the positive side) and whose directions point towards the positives.

    Probes train on a seeded ``1 - val_fraction`` of the pairs and pick the top-``k`` heads by accuracy on
    the rest; directions use every pair; sigma is the spread of the projections of ``tuning_texts``
    (default: every positive and negative text), the label-free bank of the paper's recipe. Example::

        steerer = fit_steerer_from_pairs(
            model,
            [{"question": q, "answer": a} for q, a in true_pairs],
            [{"question": q, "answer": a} for q, a in false_pairs],
            template="Question: {question}\\nAnswer: {answer}",
            k=8,
        )
        with steerer.steering(model, alpha=15, positions="generated"):
            print(model.generate("Question: Can pigs fly?\\nAnswer:", max_new_tokens=20, do_sample=False))
    """
    positive_texts = format_texts(positives, template, "positives")
    negative_texts = format_texts(negatives, template, "negatives")
    if len(positive_texts) != len(negative_texts):
        raise PairsError(
            f"got {len(positive_texts)} positives and {len(negative_texts)} negatives: pairs need one of each"
        )
    train, val = pair_split(len(positive_texts), val_fraction, seed)
    check_fit_settings(k, direction, int(model.cfg.n_layers), int(model.cfg.n_heads), tie_break)
    tuning = (
        format_texts(tuning_texts, template, "tuning_texts")
        if tuning_texts is not None
        else positive_texts + negative_texts
    )
    texts = positive_texts + negative_texts + tuning
    acts = collect_head_activations(model, texts, batch_size=batch_size, progress=progress)
    n = len(positive_texts)

    def side(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.tensor(indices + [n + i for i in indices])
        labels = torch.cat([torch.ones(len(indices)), torch.zeros(len(indices))]).to(torch.int64)
        return acts[rows], labels

    meta = model_meta(model, direction, dataset=dataset, split_seed=seed, n_train=len(train), n_val=len(val))
    return steerer_from_activations(
        *side(train),
        *side(val),
        acts[2 * n :],
        meta,
        k=k,
        backend=backend,
        seed=seed,
        tie_break=tie_break,
        progress=progress,
    )
