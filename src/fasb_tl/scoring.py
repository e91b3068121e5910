"""Teacher-forced log-likelihood of answer continuations, optionally with steering on the answer positions."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from fasb_tl.activations import pad_batch
from fasb_tl.models import check_context, encode
from fasb_tl.steering import HookState, Steerer

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


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


def score_continuations(
    model: TransformerBridge,
    contexts: Sequence[str],
    continuations: Sequence[str],
    steerer: Steerer | None = None,
    scales: Sequence[float] | None = None,
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> Float[Tensor, " n"]:
    """Sum of log p(continuation tokens | context) for each pair.

    With a ``steerer``, item ``i`` is scored with ``scales[i] * sigma_k * v_k`` added to the K heads at every
    position whose logits score a continuation token (from the last context token on), in one teacher-forced
    pass; a scale of 0 leaves that item unsteered.
    """
    if len(contexts) != len(continuations):
        raise ValueError(f"got {len(contexts)} contexts for {len(continuations)} continuations")
    if steerer is not None and (scales is None or len(scales) != len(contexts)):
        raise ValueError("steered scoring needs one scale per item")
    items = [answer_tokens(model, c, a) for c, a in zip(contexts, continuations)]
    for index, (ids, _) in enumerate(items):
        check_context(model, len(ids), what=f"scored item {index}")
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    scores = torch.zeros(len(items), dtype=torch.float64)
    state = HookState(capture=False)
    hooks = steerer.attach(model, state) if steerer is not None else nullcontext()
    bar = tqdm(total=len(items), desc="score", unit="answer", disable=not progress, leave=False)
    with torch.no_grad(), hooks:
        for first in range(0, len(order), batch_size):
            chunk = order[first : first + batch_size]
            ids, mask, _ = pad_batch([items[i][0] for i in chunk], pad, "right")
            scale = torch.zeros(ids.shape, dtype=torch.float32)
            if steerer is not None:
                for row, i in enumerate(chunk):
                    full, start = items[i]
                    scale[row, start - 1 : len(full)] = float(scales[i])
            state.scale = scale if bool((scale != 0).any()) else None
            logits = model(ids.to(model.cfg.device), attention_mask=mask.to(model.cfg.device))
            log_probs = torch.log_softmax(logits.float().cpu(), dim=-1)
            for row, i in enumerate(chunk):
                full, start = items[i]
                targets = torch.tensor(full[start:])
                scores[i] = log_probs[row, start - 1 : len(full) - 1].gather(1, targets[:, None]).sum()
            bar.update(len(chunk))
    bar.close()
    return scores
