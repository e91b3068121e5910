"""The decode loop: KV-cached generation with probe monitoring, backtracking and steering (FASB and its
ablations), for a batch of prompts at once.

How the cache is kept exact (docs/ARCHITECTURE.md, section 6, gives the full semantics):

* Rows are left-padded and share one rectangular ``DynamicCache``. A row that rolls back does not re-run
  anything: the cache slots of its dropped positions are switched off in the attention mask, and the bridge
  derives each new token's RoPE position from the mask, so the row continues as if those slots never
  existed. Slots that are off in *every* row at the end of the cache are cropped for real, so a batch of one
  never carries dead slots.
* ``reference`` history (the released code, which re-runs the whole sequence each step and edits only the
  last position): each steered step feeds the previous token again, unsteered, next to the new one, and
  switches the previous step's steered slot off. Earlier positions therefore always hold unsteered keys and
  values, for the cost of one two-token forward per step.
* ``persistent`` history (ITI-style cached generation): each regenerated position is steered once and its
  steered keys and values stay in the cache.
* After a trigger keeps ``m`` generated tokens, the last kept position (or the last prompt token) is
  recomputed with steering, since it is the position whose logits choose the first regenerated token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fasb_tl.activations import NonFiniteActivationError, Prompt, tokenize_prompts
from fasb_tl.decoding import Batch, Row
from fasb_tl.generation_config import METHODS, GenerationConfig, GenerationConfigError, GenerationResult
from fasb_tl.intervention import Intervention, SteeringScale, intervening, intervention_problem
from fasb_tl.methods import Trigger, decide, generation_checks
from fasb_tl.models import check_context
from fasb_tl.prefix import PrefixCache
from fasb_tl.sampling import choose_token, row_generator
from fasb_tl.steering import Readout

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "METHODS",
    "GenerationConfig",
    "GenerationConfigError",
    "GenerationResult",
    "generate",
    "generate_many",
]


def _finite(logits: Tensor, rows: list[Row]) -> Tensor:
    """``logits``, after checking every row's are finite (an alpha too large for the dtype gives NaN)."""
    bad = (~torch.isfinite(logits).all(dim=-1)).nonzero().flatten().tolist()
    if bad:
        row = rows[bad[0]]
        raise NonFiniteActivationError(
            f"next-token logits of prompt {row.index} are NaN or infinite under method {row.config.method!r} "
            f"with alpha {row.config.alpha} (scale {row.scale}): the steering is too strong for the model's "
            "dtype (lower alpha) or the model overflows"
        )
    return logits


class _Decoder:
    """FASB's per-row decisions on top of :class:`Batch`; each row follows its own config."""

    def __init__(self, model: TransformerBridge, steerer: Intervention | None):
        self.model = model
        self.steerer = steerer
        self.eos = model.tokenizer.eos_token_id
        pad = model.tokenizer.pad_token_id
        self.pad = pad if pad is not None else (self.eos if self.eos is not None else 0)

    @staticmethod
    def _p_true(batch: Batch) -> Tensor | None:
        if batch.readout is None or not batch.readout.values:
            return None
        return batch.readout.p_true.float().cpu()

    def run(
        self,
        jobs: list[tuple[list[int], GenerationConfig, int]],
        first_index: int,
        prefix: PrefixCache | None,
    ) -> list[Row]:
        rows = []
        for i, (prompt, cfg, sample) in enumerate(jobs):
            generator = row_generator(cfg, sample)
            rows.append(Row(index=first_index + i, prompt=prompt, live=[], config=cfg, generator=generator))
        steering = self.steerer is not None and any(row.config.method != "none" for row in rows)
        gated = steering and any(row.config.spec.gated for row in rows)
        readout = Readout(self.steerer, all_positions=False) if gated else None
        batch = Batch(self.model, rows, SteeringScale(), readout)
        finished: list[Row] = []
        readers = self.steerer.monitor_hooks(readout) if gated else []
        hooks = intervening(self.model, self.steerer, batch.scale, readers) if steering else nullcontext()
        with torch.no_grad(), hooks:
            logits = _finite(batch.prefill(self.pad, prefix), batch.rows)
            p_true = self._p_true(batch)
            for r, row in enumerate(batch.rows):
                self._start(batch, row, logits[r], None if p_true is None else float(p_true[r]))
            while True:
                finished += [row for row in batch.rows if row.done]
                batch.remove_done()
                if not batch.rows:
                    break
                if readout is not None:
                    readout.enabled = any(row.mode == "monitor" for row in batch.rows)
                logits = _finite(batch.step(self.pad), batch.rows)
                p_true = self._p_true(batch)
                for r, row in enumerate(batch.rows):
                    self._advance(batch, row, logits[r], None if p_true is None else float(p_true[r]))
        return sorted(finished, key=lambda row: row.index)

    def _start(self, batch: Batch, row: Row, logits: Tensor, p_true: float | None) -> None:
        """Decide what the row does after its prompt: plain, monitored, or steered from the first token."""
        cfg = row.config
        if cfg.spec.gate == "always":
            self._restart(batch, row, kept=0, strength=1.0)
            return
        if cfg.spec.gate == "question":
            row.result.p_true_trace.append(p_true)
            trigger = decide(cfg.spec, p_true, 0, cfg.back_steps, cfg.threshold)
            if trigger is not None:
                self._trigger(batch, row, trigger)
                return
        row.mode = "monitor" if cfg.spec.monitors else "plain"
        self._advance(batch, row, logits, p_true)

    def _advance(self, batch: Batch, row: Row, logits: Tensor, p_true: float | None) -> None:
        """Append the next token, run the FASB check, and queue what the row feeds next."""
        cfg = row.config
        token = choose_token(logits, cfg, row.generator)
        row.generated.append(token)
        n = len(row.generated)
        at_end = (cfg.stop_at_eos and token == self.eos) or n >= cfg.max_new_tokens
        if row.mode == "monitor":
            row.result.p_true_trace.append(p_true)
            if generation_checks(n, cfg.back_steps, at_end):
                trigger = decide(cfg.spec, p_true, n, cfg.back_steps, cfg.threshold)
                if trigger is not None:
                    self._trigger(batch, row, trigger)
                    return
        if at_end:
            row.done = True
            return
        steered = row.mode == "steer"
        if steered and cfg.history == "reference" and row.last_fed_steered:
            # Replace the previous position's steered keys/values by unsteered ones (see module docstring).
            previous = row.token_at(len(row.live) - 1)
            batch.drop_last(row, 1)
            row.feed = [(previous, 0.0), (token, row.scale)]
        else:
            row.feed = [(token, row.scale if steered else 0.0)]
        row.last_fed_steered = steered

    def _trigger(self, batch: Batch, row: Row, trigger: Trigger) -> None:
        result = row.result
        result.triggered = True
        result.trigger_step = len(row.generated)
        result.p_true_at_trigger = trigger.p_true
        result.strength = trigger.strength
        result.removed_token_ids = row.generated[trigger.kept :]
        self._restart(batch, row, trigger.kept, trigger.strength)

    def _restart(self, batch: Batch, row: Row, kept: int, strength: float) -> None:
        """Keep ``kept`` generated tokens and recompute the last kept position with steering."""
        if row.result.strength is None:
            row.result.strength = strength
        row.generated = row.generated[:kept]
        ends_in_eos = kept > 0 and row.config.stop_at_eos and row.generated[-1] == self.eos
        if kept >= row.config.max_new_tokens or ends_in_eos:
            # A trigger that removes nothing (no_backtrack, or back_steps 0) at the budget leaves no token to
            # steer, and at EOS it keeps a finished answer: the answer ends there (the released code generates
            # past a kept EOS).
            row.done = True
            return
        row.result.steered_from = kept
        last = len(row.prompt) + kept - 1
        batch.drop_last(row, len(row.live) - last)
        row.mode = "steer"
        row.scale = row.config.alpha * strength
        row.feed = [(row.token_at(last), row.scale)]
        row.last_fed_steered = True


def generate(
    model: TransformerBridge,
    prompts: Sequence[Prompt],
    steerer: Intervention | None = None,
    config: GenerationConfig | None = None,
    *,
    prefix: PrefixCache | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> list[GenerationResult]:
    """Generate an answer for each prompt under ``config`` (FASB by default), ``batch_size`` rows at a time.

    Text prompts follow the package's BOS convention; token-id prompts are used as given. With
    ``config.num_return_sequences = n`` the results of prompt ``i`` are ``results[i * n : (i + 1) * n]``. Every row is
    monitored, triggered, rolled back and steered independently; results equal batch-size-1 results.
    ``prefix``, a cached prefix the prompts share, saves its recomputation without changing results.
    ``steerer`` is a :class:`~fasb_tl.steering.Steerer`, or, for ``iti``, any
    :class:`~fasb_tl.intervention.Intervention` (e.g. the CAA baseline's :class:`fasb_tl.caa.ResidualSteerer`).
    Prompts are a list (a bare string is refused rather than read one character per prompt). Example::

        config = GenerationConfig(method="fasb", alpha=15, threshold=0.45, back_steps=10)
        (result,) = generate(model, [generation_prompt("Can pigs fly?")], steerer, config)
        result.text, result.triggered, result.trigger_step, result.p_true_trace  # one p_true per check
    """
    config = config or GenerationConfig()
    only = {config.method: config}
    return generate_many(
        model, prompts, steerer, only, prefix=prefix, batch_size=batch_size, progress=progress
    )[config.method]


def generate_many(
    model: TransformerBridge,
    prompts: Sequence[Prompt],
    steerer: Intervention | None,
    configs: Mapping[str, GenerationConfig],
    *,
    prefix: PrefixCache | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, list[GenerationResult]]:
    """Generate an answer for each prompt under each named config; returns the results by config name.

    The rows of every (config, prompt) pair decode together, ``batch_size`` at a time, so a comparison of
    methods costs one decode of the larger batch rather than one decode per method. Each row follows its own
    config and equals what :func:`generate` gives for that config alone. Example::

        configs = {m: dataclasses.replace(config, method=m) for m in ("none", "iti", "fasb")}
        runs = generate_many(model, prompts, steerer, configs)
        runs["fasb"][0].text
    """
    if not configs:
        raise GenerationConfigError("got no generation config (expected at least one)")
    for name, config in configs.items():
        problem = intervention_problem(config.method, config.spec.gated, steerer)
        if problem is not None:
            raise GenerationConfigError(f"{problem} (config {name!r})")
    if batch_size < 1:
        raise GenerationConfigError(f"batch_size must be >= 1, got {batch_size}")
    token_lists = tokenize_prompts(model, prompts)
    budget = max(config.max_new_tokens for config in configs.values())
    for i, ids in enumerate(token_lists):
        check_context(model, len(ids) + budget, what=f"prompt {i} plus max_new_tokens")
    # One job per (config, prompt, returned sequence), config-major; ``sample`` numbers a prompt's sequences.
    jobs = [
        (ids, config, i * config.num_return_sequences + j)
        for config in configs.values()
        for i, ids in enumerate(token_lists)
        for j in range(config.num_return_sequences)
    ]
    decoder = _Decoder(model, steerer)
    rows: list[Row] = []
    label = ", ".join(config.method for config in configs.values())
    bar = tqdm(total=len(jobs), desc=f"generate ({label})", disable=not progress, leave=False)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        rows += decoder.run(chunk, start, prefix)
        bar.update(len(chunk))
    bar.close()
    for row in rows:
        row.result.token_ids = list(row.generated)
        row.result.text = model.tokenizer.decode(row.generated, skip_special_tokens=True)
    results: dict[str, list[GenerationResult]] = {}
    start = 0
    for name, config in configs.items():
        count = len(token_lists) * config.num_return_sequences
        results[name] = [row.result for row in rows[start : start + count]]
        start += count
    return results
