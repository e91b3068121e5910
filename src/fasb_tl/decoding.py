"""The rows of a batched decode and the rectangular KV cache they share (see :mod:`fasb_tl.generation` for
how the cache is kept exact under rollbacks and steering)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from fasb_tl.activations import pad_batch
from fasb_tl.attention import cached_forward
from fasb_tl.generation_config import GenerationConfig, GenerationResult
from fasb_tl.intervention import SteeringScale
from fasb_tl.prefix import PrefixCache
from fasb_tl.steering import Readout

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@dataclass(eq=False)
class Row:
    """Decode state of one prompt: its live cache slots, its tokens and its FASB decisions."""

    index: int
    prompt: list[int]
    live: list[int]
    config: GenerationConfig
    generated: list[int] = field(default_factory=list)
    mode: Literal["monitor", "plain", "steer"] = "plain"
    scale: float = 0.0
    last_fed_steered: bool = False
    feed: list[tuple[int, float]] = field(default_factory=list)
    done: bool = False
    result: GenerationResult = field(default_factory=lambda: GenerationResult(text="", token_ids=[]))
    generator: torch.Generator | None = None

    def token_at(self, logical_position: int) -> int:
        if logical_position < len(self.prompt):
            return self.prompt[logical_position]
        return self.generated[logical_position - len(self.prompt)]


class Batch:
    """A rectangular cache shared by rows that each keep their own prefix."""

    def __init__(
        self, model: TransformerBridge, rows: list[Row], scale: SteeringScale, readout: Readout | None
    ):
        self.model = model
        self.rows = rows
        self.scale = scale
        self.readout = readout
        self.cache = None
        self.mask: Tensor | None = None

    def prefill(self, pad_id: int, prefix: PrefixCache | None) -> Tensor:
        """Run the prompts (left-padded after any shared cached prefix); returns next-token logits."""
        prompts = [row.prompt for row in self.rows]
        shared = prefix.shared_length(prompts) if prefix is not None else 0
        ids, mask, offsets = pad_batch([p[shared:] for p in prompts], pad_id, "left")
        for row, offset in zip(self.rows, offsets.tolist()):
            row.live = list(range(shared)) + list(range(shared + offset, shared + ids.shape[1]))
        self.mask = torch.cat([torch.ones(len(prompts), shared, dtype=torch.long), mask], dim=1)
        if shared:
            self.cache = prefix.expand(len(prompts), shared)
        return self._forward(ids, torch.zeros(ids.shape, dtype=torch.float32))

    def step(self, pad_id: int) -> Tensor:
        """Feed each row's pending tokens (right-aligned, padded to the widest row) and return logits."""
        self._crop_dead_tail()
        width = max(len(row.feed) for row in self.rows)
        ids = torch.full((len(self.rows), width), pad_id, dtype=torch.long)
        new_mask = torch.zeros((len(self.rows), width), dtype=torch.long)
        scale = torch.zeros((len(self.rows), width), dtype=torch.float32)
        start = self.mask.shape[1]
        for r, row in enumerate(self.rows):
            first = width - len(row.feed)
            for j, (token, token_scale) in enumerate(row.feed):
                ids[r, first + j] = token
                new_mask[r, first + j] = 1
                scale[r, first + j] = token_scale
                row.live.append(start + first + j)
            row.feed = []
        self.mask = torch.cat([self.mask, new_mask], dim=1)
        return self._forward(ids, scale)

    def _forward(self, ids: Tensor, scale: Tensor) -> Tensor:
        self.scale.set(scale if bool((scale != 0).any()) else None)
        if self.readout is not None:
            self.readout.values.clear()
        # Only the last position's logits choose a token: skipping the others' unembedding saves most of a
        # prompt's unembedding and half of every two-token step's.
        logits, self.cache = cached_forward(self.model, ids, self.mask, self.cache, logits_to_keep=1)
        return logits[:, -1].float().cpu()

    def drop_last(self, row: Row, count: int) -> None:
        """Switch off the cache slots of ``row``'s last ``count`` live positions."""
        r = next(i for i, candidate in enumerate(self.rows) if candidate is row)
        for _ in range(count):
            self.mask[r, row.live.pop()] = 0

    def _crop_dead_tail(self) -> None:
        alive = self.mask.any(dim=0).nonzero()
        keep = int(alive.max()) + 1 if alive.numel() else 0
        dead = self.mask.shape[1] - keep
        if dead:
            self.cache.crop(-dead)
            self.mask = self.mask[:, :keep]

    def remove_done(self) -> None:
        """Drop finished rows from the batch so they stop costing compute."""
        keep = [r for r, row in enumerate(self.rows) if not row.done]
        if len(keep) == len(self.rows):
            return
        index = torch.tensor(keep, dtype=torch.long)
        if keep:
            self.cache.batch_select_indices(index.to(self.model.cfg.device))
        self.mask = self.mask[index]
        self.rows = [self.rows[r] for r in keep]
