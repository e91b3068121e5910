"""A faithful re-implementation of the released FASB code's decode loop, for cost comparison only.

Like ``FASB_utils.tqa_run_answers``: no KV cache (every step re-runs the whole sequence), hook_z of every
layer read at each step, one sklearn ``LogisticRegression.predict_proba`` per selected head, and after a
trigger a steered re-run of the whole sequence per token that edits only the last position.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from fasb_tl.activations import hook_z_name
from fasb_tl.intervention import SteeringScale
from fasb_tl.steering import Steerer


def sklearn_probes(steerer: Steerer) -> list[LogisticRegression]:
    """One fitted-looking sklearn model per selected head, carrying the Steerer's weights."""
    probes = []
    for weights, bias in zip(steerer.probe_weights.numpy(), steerer.probe_bias.numpy()):
        probe = LogisticRegression()
        probe.coef_ = weights[None, :].astype(np.float64)
        probe.intercept_ = np.array([bias], dtype=np.float64)
        probe.classes_ = np.array([0, 1])
        probes.append(probe)
    return probes


def released_generate(
    model,
    steerer: Steerer,
    prompt: list[int],
    alpha: float,
    threshold: float,
    back_steps: int,
    max_new_tokens: int,
) -> list[int]:
    """Generate like the released code (greedy, one backtrack at most, no stop at EOS); returns new tokens."""
    probes = sklearn_probes(steerer)
    names = [hook_z_name(layer) for layer in range(model.cfg.n_layers)]
    heads = steerer.heads.tolist()
    ids, generated, strength = list(prompt), [], None
    with torch.no_grad():
        for position in range(max_new_tokens):
            logits, cache = model.run_with_cache(torch.tensor([ids]), names_filter=lambda n: n in names)
            token = int(logits[0, -1].argmax())
            ids.append(token)
            generated.append(token)
            if position != max_new_tokens - 1 and len(generated) < back_steps:
                continue
            p_true = np.mean(
                [
                    probe.predict_proba(cache[hook_z_name(l)][0, -1, h].numpy()[None, :])[0, 1]
                    for probe, (l, h) in zip(probes, heads)
                ]
            )
            if p_true < threshold:
                strength = 1.0 - p_true
                generated = generated[: len(generated) - back_steps] if len(generated) > back_steps else []
                ids = list(prompt) + generated
                break
        if strength is not None:
            steering = SteeringScale()
            with steerer.attach(model, steering):
                while len(generated) < max_new_tokens:
                    scale = torch.zeros(1, len(ids))
                    scale[0, -1] = alpha * strength
                    steering.set(scale)
                    token = int(model(torch.tensor([ids]))[0, -1].argmax())
                    ids.append(token)
                    generated.append(token)
    return generated
