"""A deliberately simple FASB loop with no KV cache, written to follow the released code line by line.

Every step re-runs the whole sequence. ``reference`` history steers only the last position of each forward
(so earlier positions are recomputed unsteered); ``persistent`` steers every position from the last kept one
on. The cached loop in ``fasb_tl.generation`` must produce exactly the same tokens and decisions.
"""

from __future__ import annotations

import torch

from fasb_tl.generation import GenerationConfig, GenerationResult
from fasb_tl.intervention import SteeringScale
from fasb_tl.methods import MONITORING_METHODS
from fasb_tl.scoring import answer_tokens
from fasb_tl.steering import Readout, Steerer


def _forward(model, ids: list[int], steerer: Steerer | None, scale: float, steer_from: int, history: str):
    steering = SteeringScale()
    if scale:
        positions = torch.zeros(1, len(ids))
        if history == "reference":
            positions[0, -1] = scale
        else:
            positions[0, steer_from:] = scale
        steering.set(positions)
    with torch.no_grad():
        if steerer is None:
            return model(torch.tensor([ids]))[0, -1], None
        readout = Readout(steerer, all_positions=False)
        with steerer.attach(model, steering, readout):
            logits = model(torch.tensor([ids]))[0, -1]
        return logits, float(readout.p_true[0])


def reference_generate(
    model, prompt: list[int], steerer: Steerer | None, cfg: GenerationConfig
) -> GenerationResult:
    eos = model.tokenizer.eos_token_id if cfg.stop_at_eos else None
    q = len(prompt)
    ids, gen = list(prompt), []
    result = GenerationResult(text="", token_ids=[])
    strength, kept = None, None
    finished = False

    if cfg.method == "iti":
        strength, kept = 1.0, 0
    elif cfg.method == "question":
        _, p = _forward(model, ids, steerer, 0.0, 0, cfg.history)
        result.p_true_trace.append(p)
        if p < cfg.threshold:
            strength, kept = 1.0 - p, 0

    if strength is None:
        for _ in range(cfg.max_new_tokens):
            logits, p = _forward(model, ids, steerer, 0.0, 0, cfg.history)
            token = int(logits.argmax())
            ids.append(token)
            gen.append(token)
            n = len(gen)
            at_end = token == eos or n == cfg.max_new_tokens
            if cfg.method in MONITORING_METHODS:
                result.p_true_trace.append(p)
                if (n >= cfg.back_steps or at_end) and p < cfg.threshold:
                    strength = 1.0 - p if cfg.method in ("fasb", "no_backtrack") else 1.0
                    kept = n if cfg.method == "no_backtrack" else max(n - cfg.back_steps, 0)
                    result.triggered, result.trigger_step, result.p_true_at_trigger = True, n, p
                    result.removed_token_ids = gen[kept:]
                    result.strength = strength
                    gen = gen[:kept]
                    ids = prompt + gen
                    # Deliberate difference from the released code, which generates past a kept EOS: an
                    # answer whose kept tokens end in EOS is finished.
                    finished = (cfg.method == "no_backtrack" and at_end) or (bool(gen) and gen[-1] == eos)
                    break
            if at_end:
                finished = True
                break
    elif cfg.method == "question":
        result.triggered, result.trigger_step, result.p_true_at_trigger = True, 0, 1.0 - strength
        result.strength = strength

    if strength is not None and not finished and len(gen) < cfg.max_new_tokens:
        result.strength = strength
        result.steered_from = kept
        steer_from = q + kept - 1
        while len(gen) < cfg.max_new_tokens:
            logits, _ = _forward(model, ids, steerer, cfg.alpha * strength, steer_from, cfg.history)
            token = int(logits.argmax())
            ids.append(token)
            gen.append(token)
            if token == eos:
                break
    result.token_ids = gen
    result.text = model.tokenizer.decode(gen, skip_special_tokens=True)
    return result


def splitting_thresholds(model, steerer: Steerer, prompts: list[str], back_steps: int, max_new_tokens: int):
    """Thresholds that split ``prompts`` into triggered and untriggered rows, read off an unsteered run.

    A monitored row triggers iff its lowest p_true from the first check on is below the threshold, and the
    question gate iff the prompt's own p_true is. A midpoint between two of those values (never a value itself,
    where float noise would decide) gives a mix of both outcomes.
    """
    from fasb_tl.generation import generate

    def midpoint(values):
        ordered = sorted(values)
        middle = len(ordered) // 2
        return (ordered[middle - 1] + ordered[middle]) / 2

    monitor = GenerationConfig(
        method="fasb", threshold=0.0, back_steps=back_steps, max_new_tokens=max_new_tokens
    )
    results = generate(model, prompts, steerer, monitor, progress=False)
    first_check = max(back_steps, 1) - 1
    return {
        "question": midpoint(r.p_true_trace[0] for r in results),
        # A row that stops (EOS) before the first regular check is checked at its last token.
        "monitor": midpoint(
            min(r.p_true_trace[min(first_check, len(r.p_true_trace) - 1) :]) for r in results
        ),
    }


def decisions(result: GenerationResult) -> tuple:
    """What the equivalence tests compare besides ``p_true_trace``: tokens and every FASB decision."""
    return (
        result.token_ids,
        result.triggered,
        result.trigger_step,
        result.removed_token_ids,
        result.steered_from,
        None if result.strength is None else round(result.strength, 4),
    )


def full_forward_log_likelihood(model, context: str, option: str) -> float:
    """Log-likelihood of ``option`` after ``context`` from one uncached forward over both."""
    full, start = answer_tokens(model, context, option)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([full]))[0], dim=-1)
    return sum(log_probs[p - 1, full[p]].item() for p in range(start, len(full)))
