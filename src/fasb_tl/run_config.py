"""The settings every end-to-end run shares: ``fasb demo``'s :class:`~fasb_tl.demo.DemoConfig` and ``fasb
bench``'s :class:`~fasb_tl.bench.BenchConfig` extend :class:`RunConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from fasb_tl.models import DEFAULT_MODEL


@dataclass(frozen=True)
class RunConfig:
    """The model, the Steerer's K heads and seed, and FASB's alpha, back_steps and new-token budget."""

    model: str = DEFAULT_MODEL
    k: int = 24
    alpha: float = 15.0
    back_steps: int = 10
    max_new_tokens: int = 50
    seed: int = 42
