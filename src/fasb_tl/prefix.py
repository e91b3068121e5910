"""A KV cache for a prefix that many prompts share (the TruthfulQA instruction + 6-shot primer).

The prefix is run once per model; each batch starts from a copy of its cache, repeated over the batch and
cropped to the token prefix that every prompt of the batch really shares (a BPE merge across the boundary
shortens it, never breaks it).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from fasb_tl.attention import cached_forward
from fasb_tl.models import encode

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@dataclass
class PrefixCache:
    """Token ids of a shared prefix and the model's KV cache for them (batch of one)."""

    tokens: list[int]
    cache: Any

    def shared_length(self, token_lists: Sequence[Sequence[int]]) -> int:
        """How many leading tokens every prompt shares with the prefix, leaving each at least one to feed."""
        shared = len(self.tokens)
        for ids in token_lists:
            common = 0
            limit = min(len(ids) - 1, shared)
            while common < limit and ids[common] == self.tokens[common]:
                common += 1
            shared = common
        return shared

    def expand(self, batch: int, length: int) -> Any:
        """A fresh copy of the cache for ``batch`` rows, holding the first ``length`` prefix positions."""
        cache = copy.deepcopy(self.cache)
        if length < len(self.tokens):
            cache.crop(length - len(self.tokens))
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        return cache


def build_prefix_cache(model: TransformerBridge, text: str) -> PrefixCache:
    """Run ``text`` (under the BOS convention) once and keep its KV cache."""
    tokens = encode(model, text)
    with torch.no_grad():
        _, cache = cached_forward(
            model, torch.tensor([tokens]), torch.ones(1, len(tokens), dtype=torch.long), None
        )
    return PrefixCache(tokens=tokens, cache=cache)
