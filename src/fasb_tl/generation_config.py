"""What decides how answers are generated (:class:`GenerationConfig`) and what comes back
(:class:`GenerationResult`); the decode loop itself is :mod:`fasb_tl.generation`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fasb_tl.methods import DECODE_METHODS, MethodSettings

Method = Literal["none", "iti", "question", "no_backtrack", "fixed", "fasb"]
METHODS = DECODE_METHODS
History = Literal["reference", "persistent"]
HISTORIES = ("reference", "persistent")


class GenerationConfigError(ValueError):
    """A generation setting outside its valid range."""


@dataclass(frozen=True)
class GenerationConfig(MethodSettings):
    """Everything that decides how answers are generated and steered.

    ``method`` selects the paper's variant: ``none`` (no steering), ``iti`` (always steer with strength 1 from
    the first generated token), ``question`` (decide once from the prompt's last token), ``no_backtrack``
    (steer from the detection point on, keep every token), ``fixed`` (FASB with strength 1) and ``fasb``
    (backtrack ``back_steps`` tokens, strength ``1 - p_true``). The steering added to each selected head is
    ``alpha * strength * sigma_k * v_k``. ``alpha``, ``threshold``, ``back_steps`` and ``force_threshold`` are
    the :class:`~fasb_tl.methods.MethodSettings` every config shares. With ``do_sample``, tokens are drawn at
    ``temperature`` from the ``top_k`` most likely (0: all) and then the smallest set reaching ``top_p``, as in
    transformers; each returned sequence (``num_return_sequences`` per prompt) has its own random stream from
    ``seed`` and its number (see :mod:`fasb_tl.sampling`).
    """

    method: Method = "fasb"
    max_new_tokens: int = 50
    history: History = "reference"
    stop_at_eos: bool = True
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_return_sequences: int = 1
    seed: int = 0

    accepted = METHODS
    error = GenerationConfigError

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_one_of("history", HISTORIES)
        for name in ("max_new_tokens", "seed", "top_k", "num_return_sequences"):
            self.check_number(name, integer=True)
        self.check_number("temperature")
        self.check_number("top_p")
        if self.top_k < 0:
            raise GenerationConfigError(f"top_k must be >= 0 (0 keeps every token), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise GenerationConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_return_sequences < 1 or (self.num_return_sequences > 1 and not self.do_sample):
            raise GenerationConfigError(
                f"num_return_sequences must be >= 1, and 1 unless do_sample=True (greedy decoding returns one "
                f"sequence), got {self.num_return_sequences}"
            )
        if self.max_new_tokens < 1:
            raise GenerationConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.seed < 2**63:
            raise GenerationConfigError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.do_sample and not 0 < self.temperature < float("inf"):
            raise GenerationConfigError(
                f"temperature must be > 0 and finite when sampling, got {self.temperature}"
            )


@dataclass
class GenerationResult:
    """One generated answer and what FASB did while producing it.

    ``trigger_step`` is the number of generated tokens when the probes fired, ``removed_token_ids`` what the
    backtrack dropped, and ``steered_from`` how many tokens were kept before steered generation began (None
    when no steered token followed: no trigger, or a trigger that kept the whole budget or a final EOS).
    """

    text: str
    token_ids: list[int]
    triggered: bool = False
    trigger_step: int | None = None
    p_true_at_trigger: float | None = None
    strength: float | None = None
    removed_token_ids: list[int] = field(default_factory=list)
    steered_from: int | None = None
    p_true_trace: list[float] = field(default_factory=list)

    @property
    def n_removed(self) -> int:
        """How many generated tokens the backtrack removed."""
        return len(self.removed_token_ids)
