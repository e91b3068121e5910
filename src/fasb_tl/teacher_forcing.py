"""One teacher-forced pass over many answers, sharing each question's context: the engine under
:mod:`fasb_tl.scoring`, which decides what to steer."""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fasb_tl.activations import pad_batch
from fasb_tl.attention import cached_forward
from fasb_tl.intervention import Intervention, SteeringScale, intervening
from fasb_tl.prefix import PrefixCache
from fasb_tl.steering import Readout

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@dataclass
class Pass:
    """Per answer: its log-likelihood, and p_true at its positions when the pass monitored."""

    scores: Tensor
    p_true: list[Tensor | None]


def _context_batches(
    groups: list[tuple[list[int], list[int]]], batch_size: int
) -> list[list[tuple[list[int], list[int]]]]:
    """Consecutive runs of ``(context, members)`` groups holding at most ``batch_size`` options (a larger
    group stands alone). Groups without a context (the answer starts right after BOS) never share a batch
    with the others, so no row of a context pass is all padding."""
    batches: list[list[tuple[list[int], list[int]]]] = []
    size = 0
    for group in groups:
        fits = batches and size + len(group[1]) <= batch_size
        if not fits or bool(batches[-1][0][0]) != bool(group[0]):
            batches.append([])
            size = 0
        batches[-1].append(group)
        size += len(group[1])
    return batches


def _select_rows(cache: Any, rows: Tensor, copy_first: bool) -> Any:
    """The cache rows ``rows`` (repeats allowed), on a copy when the original is still needed."""
    selected = copy.deepcopy(cache) if copy_first else cache
    selected.batch_select_indices(rows)
    return selected


def teacher_forced(
    model: TransformerBridge,
    items: list[tuple[list[int], int]],
    intervention: Intervention | None,
    steer_from: list[tuple[int, float] | None],
    monitor: bool,
    prefix: PrefixCache | None,
    batch_size: int,
    desc: str,
    progress: bool,
) -> Pass:
    """One teacher-forced pass over every item: answer log-likelihoods, optional steering (from a position on,
    at a scale) and, with ``monitor`` (``intervention`` is then a Steerer), p_true at every answer position.

    Items that share a context (the options of one question) share its computation, and the contexts of
    several questions run together: one unsteered pass over the contexts up to their last token (left-padded
    on top of the shared prefix's cache), then one pass over the options (last context token + answer), each
    row continuing its own question's cache. Steering never starts before the last context token, so the
    cached part is the same with or without it. The options are left-padded, so every row's answer ends in
    the last column and only the last columns are unembedded.
    """
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    device = model.cfg.device
    by_context: dict[tuple[int, ...], list[int]] = {}
    for index, (full, start) in enumerate(items):
        by_context.setdefault(tuple(full[: start - 1]), []).append(index)
    # Questions whose answers (then contexts) have similar lengths batch with little padding; most of the
    # computed positions are answer positions, and only those are unembedded.
    groups = sorted(
        ((list(c), m) for c, m in by_context.items()),
        key=lambda group: (
            bool(group[0]),
            max(len(items[i][0]) - len(group[0]) for i in group[1]),
            len(group[0]),
        ),
    )
    scores = torch.zeros(len(items), dtype=torch.float64)
    p_true: list[Tensor | None] = [None] * len(items)
    steering = SteeringScale()
    readout = Readout(intervention, all_positions=True) if monitor else None
    readers = intervention.monitor_hooks(readout) if readout is not None else []
    hooks = intervening(model, intervention, steering, readers) if intervention is not None else nullcontext()
    bar = tqdm(total=len(items), desc=desc, unit="answer", disable=not progress, leave=False)
    with torch.no_grad(), hooks:
        for batch in _context_batches(groups, batch_size):
            contexts = [context for context, _ in batch]
            cache, context_mask = None, torch.zeros(len(batch), 0, dtype=torch.long)
            if contexts[0]:
                shared = prefix.shared_length(contexts) if prefix is not None else 0
                ids, mask, _ = pad_batch([c[shared:] for c in contexts], pad, "left")
                context_mask = torch.cat([torch.ones(len(batch), shared, dtype=torch.long), mask], dim=1)
                steering.set(None)
                if readout is not None:
                    readout.enabled = False
                _, cache = cached_forward(
                    model, ids, context_mask, prefix.expand(len(batch), shared) if shared else None
                )
            members = [(g, i) for g, (_, indices) in enumerate(batch) for i in indices]
            chunks = [members[first : first + batch_size] for first in range(0, len(members), batch_size)]
            for number, chunk in enumerate(chunks):
                owners = torch.tensor([g for g, _ in chunk], dtype=torch.long)
                tails = [items[i][0][len(contexts[g]) :] for g, i in chunk]
                ids, mask, offsets = pad_batch(tails, pad, "left")
                scale = torch.zeros(ids.shape, dtype=torch.float32)
                for row, (g, i) in enumerate(chunk):
                    if steer_from[i] is not None:
                        position, value = steer_from[i]
                        scale[row, int(offsets[row]) + position - len(contexts[g]) :] = value
                steering.set(scale if bool((scale != 0).any()) else None)
                if readout is not None:
                    readout.enabled = True
                    readout.values.clear()
                # Columns from the first scored position on: the answer plus the last context token.
                keep = max(len(items[i][0]) - items[i][1] + 1 for _, i in chunk)
                chunk_cache = (
                    _select_rows(cache, owners.to(device), number < len(chunks) - 1)
                    if cache is not None
                    else None
                )
                logits, _ = cached_forward(
                    model,
                    ids,
                    torch.cat([context_mask[owners], mask], dim=1),
                    chunk_cache,
                    logits_to_keep=keep,
                )
                log_probs = torch.log_softmax(logits.float().cpu(), dim=-1)
                batch_p = readout.p_true.float().cpu() if readout is not None else None
                for row, (_, i) in enumerate(chunk):
                    full, start = items[i]
                    answer = len(full) - start
                    targets = torch.tensor(full[start:])
                    picked = log_probs[row, keep - 1 - answer : keep - 1].gather(1, targets[:, None])
                    scores[i] = picked.sum()
                    if batch_p is not None:
                        p_true[i] = batch_p[row, ids.shape[1] - 1 - answer :]
                bar.update(len(chunk))
    bar.close()
    return Pass(scores=scores, p_true=p_true)
