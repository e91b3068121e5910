"""Choosing the next token: greedy, or sampled with temperature, top-k and top-p as transformers defines them,
from a random stream of each row's own.

A row's stream is seeded from the config's seed and the row's sample number (its prompt's index times
``num_return_sequences`` plus the sequence's index), so a sample does not depend on the batch it decodes in,
copies of one prompt get different samples, and the same prompt under several configs of one
``generate_many`` call draws the same stream.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from fasb_tl.generation_config import GenerationConfig


def row_generator(config: GenerationConfig, sample: int) -> torch.Generator | None:
    """The random stream of sample number ``sample`` under ``config`` (None when decoding greedily)."""
    if not config.do_sample:
        return None
    state = np.random.SeedSequence([config.seed, sample]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def choose_token(
    logits: Float[Tensor, " vocab"], config: GenerationConfig, generator: torch.Generator | None
) -> int:
    """The next token: the argmax, or a draw from the temperature-scaled distribution restricted to the
    ``top_k`` most likely tokens and then to the smallest set whose probability reaches ``top_p``."""
    if not config.do_sample:
        return int(logits.argmax())
    # Shifted by the maximum and in float64, so a tiny temperature gives a one-hot distribution, not inf / inf.
    scaled = (logits.double() - logits.max()) / config.temperature
    if config.top_k:
        kth = torch.topk(scaled, min(config.top_k, scaled.numel())).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if config.top_p < 1.0:
        ordered, order = torch.sort(scaled, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        before = probs.cumsum(-1) - probs
        # A token stays when the tokens ranked above it hold less than top_p: the first one always stays.
        scaled = scaled.masked_fill(
            torch.zeros_like(scaled, dtype=torch.bool).scatter(0, order, before >= config.top_p),
            float("-inf"),
        )
    return int(torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=generator))
